"""Exact evaluation metrics: hand-checked values, ReaL labels, 2-process gloo merge, atomic metric files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pretrain.cluster.distributed import free_port
from pretrain.evaluators.accuracy import EvalAccumulator, load_real_labels, write_metrics

NUM_CLASSES, NUM_SAMPLES = 7, 101


def evaluation_set():
    """101 samples: logits, labels, validation keys and ReaL labels (every 10th list empty)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(NUM_SAMPLES, NUM_CLASSES, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES,), generator=generator)
    keys = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(NUM_SAMPLES)]
    real = {
        k: [] if i % 10 == 0 else sorted({int(labels[i]), (int(labels[i]) + i) % NUM_CLASSES})
        for i, k in enumerate(keys)
    }
    return logits, labels, keys, real


def accumulate(accumulator, logits, labels, keys, batch_size):
    for start in range(0, len(labels), batch_size):
        stop = start + batch_size
        accumulator.update(logits[start:stop], labels[start:stop], keys[start:stop])


def test_values_match_a_hand_computation():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0], [1.0, 0.0, 2.0], [2.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2, 2, 1])
    acc = EvalAccumulator(4 - 1)
    acc.update(logits[:3], labels[:3])
    acc.update(logits[3:], labels[3:])
    result = acc.result()
    assert result["num_samples"] == 4
    assert result["top1"] == 0.5 and result["top5"] == 1.0  # top-k is top-3 with 3 classes
    assert result["loss"] == pytest.approx(F.cross_entropy(logits.double(), labels).item(), rel=1e-15)
    assert result["per_class_accuracy"] == [1.0, 0.0, 0.5]
    assert "real_top1" not in result


def test_top5_and_classes_without_samples():
    # Predictions 0, 1, 2 (top-5 adds 7, 6, 5, 4) for labels 0, 3, 6: top-1 hits 1, top-5 hits 2.
    logits = torch.eye(8)[[0, 1, 2]] * 10 + torch.arange(8.0)
    acc = EvalAccumulator(8)
    acc.update(logits, torch.tensor([0, 3, 6]))
    result = acc.result()
    assert result["top1"] == 1 / 3 and result["top5"] == 2 / 3
    assert result["per_class_accuracy"] == [1.0, None, None, 0.0, None, None, 0.0, None]


def test_real_accuracy_excludes_images_without_labels():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    real = {"a": [0, 2], "b": [2], "c": [], "d": [0]}
    acc = EvalAccumulator(3, real_labels=real)
    acc.update(logits, torch.tensor([0, 1, 2, 1]), keys=["a", "b", "c", "d"])
    result = acc.result()
    assert result["real_num_samples"] == 3 and result["real_top1"] == 2 / 3
    assert result["top1"] == 0.75  # ReaL ignores the original labels


def test_real_labels_are_looked_up_by_source_file_name():
    # The keys are data_prep's renumbered ones; the ReaL table is keyed by validation file name.
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3, 4)]
    real = dict(zip(names, [[0, 2], [2], [], [0]], strict=True))
    acc = EvalAccumulator(3, real_labels=real)
    acc.update(logits[:2], torch.tensor([0, 1]), keys=["val-000000003", "val-000000000"], sources=names[:2])
    acc.update(logits[2:], torch.tensor([2, 1]), keys=["val-000000001", "val-000000002"], sources=names[2:])
    result = acc.result()
    assert result["num_samples"] == 4 and result["real_num_samples"] == 3 and result["real_top1"] == 2 / 3
    assert result["top1"] == 0.75


def test_missing_source_names_are_clear_errors():
    real = {"ILSVRC2012_val_00000001.JPEG": [0], "ILSVRC2012_val_00000002.JPEG": []}
    table = r"the ReaL table \(2 images, named like 'ILSVRC2012_val_00000001.JPEG'\)"
    acc = EvalAccumulator(3, real_labels=real)
    missing = "ILSVRC2012_val_00000003.JPEG"
    with pytest.raises(ValueError, match=f"^sample 'val-000000007' \\(source file '{missing}'\\) is not in {table}$"):
        acc.update(torch.zeros(1, 3), torch.tensor([0]), keys=["val-000000007"], sources=[missing])
    with pytest.raises(
        ValueError,
        match=f"^sample 'val-000000008' has no source file name \\(its shard has no json member with a path\\), "
        f"so it cannot be looked up in {table}; build the shards with data_prep$",
    ):
        acc.update(torch.zeros(1, 3), torch.tensor([0]), keys=["val-000000008"], sources=[""])
    with pytest.raises(ValueError, match="^a sample \\(source file 'x.png'\\) is not in the ReaL table"):
        EvalAccumulator(3, real_labels=real).update(torch.zeros(1, 3), torch.tensor([0]), sources=["x.png"])
    with pytest.raises(ValueError, match="^got 1 source names for a batch of 2$"):
        EvalAccumulator(3, real_labels=real).update(torch.zeros(2, 3), torch.tensor([0, 1]), sources=["a"])


def test_keys_and_labels_are_checked():
    acc = EvalAccumulator(3, real_labels={"a": [0]})
    with pytest.raises(ValueError, match="^ReaL labels were given, so update\\(\\) needs the sample keys$"):
        acc.update(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="^no ReaL labels for sample 'b'$"):
        acc.update(torch.zeros(1, 3), torch.tensor([0]), keys=["b"])
    acc = EvalAccumulator(3)
    acc.update(torch.zeros(2, 3), torch.tensor([0, 1]), keys=["x", "y"])
    with pytest.raises(ValueError, match="^sample 'y' was counted twice$"):
        acc.update(torch.zeros(1, 3), torch.tensor([0]), keys=["y"])
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, 3\), got 0..3$"):
        acc.update(torch.zeros(2, 3), torch.tensor([0, 3]), keys=["p", "q"])
    with pytest.raises(ValueError, match="^no samples were evaluated$"):
        EvalAccumulator(3).result()


def test_all_reduce_without_process_group_is_a_no_op():
    logits, labels, keys, real = evaluation_set()
    acc = EvalAccumulator(NUM_CLASSES, real)
    accumulate(acc, logits, labels, keys, 32)
    before = acc.result()
    acc.all_reduce()
    assert acc.result() == before


def _distributed_worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        logits, labels, keys, real = evaluation_set()
        part = slice(0, 51) if rank == 0 else slice(51, NUM_SAMPLES)  # uneven: 51 + 50
        acc = EvalAccumulator(NUM_CLASSES, real)
        accumulate(acc, logits[part], labels[part], keys[part], 16 if rank == 0 else 7)
        acc.all_reduce()
        write_metrics(out_dir / f"merged{rank}.json", acc.result())
        # A padding sampler: rank 1 also sees sample 0.
        part = slice(0, 51) if rank == 0 else [0, *range(51, NUM_SAMPLES)]
        acc = EvalAccumulator(NUM_CLASSES, real)
        idx = torch.arange(NUM_SAMPLES)[part]
        accumulate(acc, logits[idx], labels[idx], [keys[i] for i in idx], 16)
        try:
            acc.all_reduce()
            message = "no error"
        except ValueError as e:
            message = str(e)
        (out_dir / f"padded{rank}.txt").write_text(message)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_with_uneven_parts_equal_one_process(tmp_path):
    logits, labels, keys, real = evaluation_set()
    single = EvalAccumulator(NUM_CLASSES, real)
    accumulate(single, logits, labels, keys, 101)
    expected = single.result()
    expected_loss = expected.pop("loss")
    mp.spawn(_distributed_worker, args=(free_port(), tmp_path), nprocs=2, join=True)
    for rank in range(2):
        merged = json.loads((tmp_path / f"merged{rank}.json").read_text())
        assert merged["num_samples"] == NUM_SAMPLES and merged["real_num_samples"] == 90
        assert merged.pop("loss") == pytest.approx(expected_loss, rel=1e-12)
        assert merged == expected
        assert (tmp_path / f"padded{rank}.txt").read_text() == (
            "1 sample(s) were evaluated on more than one rank (a padding sampler?); exact evaluation needs "
            "each sample exactly once"
        )


def test_load_real_labels_by_file_name_and_by_key(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[3], [], [1, 4]]))
    assert load_real_labels(path) == {
        "ILSVRC2012_val_00000001.JPEG": [3],
        "ILSVRC2012_val_00000002.JPEG": [],
        "ILSVRC2012_val_00000003.JPEG": [1, 4],
    }
    assert load_real_labels(path, ["val/ILSVRC2012_val_00000003", "ILSVRC2012_val_00000001.JPEG"]) == {
        "val/ILSVRC2012_val_00000003": [1, 4],
        "ILSVRC2012_val_00000001.JPEG": [3],
    }
    with pytest.raises(
        ValueError, match=r"^sample key 'ILSVRC2012_val_00000004': image 4 is outside .*'s 1\.\.3$"
    ):
        load_real_labels(path, ["ILSVRC2012_val_00000004"])
    with pytest.raises(
        ValueError, match="^sample key 'n01440764_1' does not name an ImageNet validation image"
    ):
        load_real_labels(path, ["n01440764_1"])
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError, match="is not a ReaL label file: expected a JSON list of label lists$"):
        load_real_labels(path)


def test_write_metrics_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "eval" / "metrics.json"
    write_metrics(path, {"top1": 0.5})
    write_metrics(path, {"top1": 0.75, "per_class_accuracy": [None, 1.0]})
    assert json.loads(path.read_text()) == {"top1": 0.75, "per_class_accuracy": [None, 1.0]}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    with pytest.raises(TypeError):
        write_metrics(path, {"bad": object()})
    assert json.loads(path.read_text())["top1"] == 0.75
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
