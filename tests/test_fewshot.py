"""Few-shot least-squares evaluation: closed form vs a direct solve, shot sampling, feature extraction (the
evaluator's own pass)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretrain.evaluators.fewshot_lsr import (
    BIAS_FEATURE,
    FewShotError,
    fewshot_accuracy,
    fewshot_indices,
    fit_lsr,
)
from pretrain.evaluators.forward import forward_batches, pre_logits
from tests.helpers_finetune import make_mixer


def direct_solve(features, labels, num_classes, l2_reg):
    """Ridge weights by least squares on the augmented system [X; sqrt(l2) I] W = [Y; 0]."""
    x = features.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-5
    design = np.hstack([(x - mean) / std, np.full((len(x), 1), BIAS_FEATURE)])
    targets = np.where(labels[:, None] == np.arange(num_classes), 1.0, -1.0)
    dim = design.shape[1]
    augmented = np.vstack([design, np.sqrt(l2_reg) * np.eye(dim)])
    weights = np.linalg.lstsq(augmented, np.vstack([targets, np.zeros((dim, num_classes))]), rcond=None)[0]
    return weights, mean, std


def clustered(rng, num_classes, per_class, dim, spread=1.0):
    centers = rng.normal(size=(num_classes, dim)) * 3
    labels = np.repeat(np.arange(num_classes), per_class)
    return (centers[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("rows,dim", [(60, 8), (12, 30)])  # primal (N >= D) and dual (N < D) solves
@pytest.mark.parametrize("l2_reg", [1.0, 2.0**10])
def test_fit_matches_direct_least_squares(rows, dim, l2_reg):
    rng = np.random.default_rng(0)
    features, labels = clustered(rng, 4, rows // 4, dim)
    probe = fit_lsr(features, labels, 4, l2_reg)
    weights, mean, std = direct_solve(features, labels, 4, l2_reg)
    np.testing.assert_allclose(probe.weights, weights, atol=1e-5, rtol=1e-5)
    test_features = rng.normal(size=(200, dim)).astype(np.float32) * 3
    design = np.hstack([(test_features - mean) / std, np.full((200, 1), BIAS_FEATURE)])
    direct = np.argmax(design @ weights, axis=1)
    np.testing.assert_array_equal(probe.predict(test_features), direct)


def test_shot_sets_are_per_class_deterministic_and_nested():
    labels = np.repeat(np.arange(5), 30)
    np.random.default_rng(1).shuffle(labels)
    five = fewshot_indices(labels, 5, 5, seed=3)
    assert np.bincount(labels[five]).tolist() == [5] * 5
    np.testing.assert_array_equal(five, fewshot_indices(labels, 5, 5, seed=3))
    assert not np.array_equal(five, fewshot_indices(labels, 5, 5, seed=4))
    one = fewshot_indices(labels, 5, 1, seed=3)
    assert set(one) <= set(five)


def test_fewshot_accuracy_per_seed_and_summary():
    rng = np.random.default_rng(0)
    train, train_labels = clustered(rng, 6, 20, 16, spread=4.0)
    test, test_labels = clustered(np.random.default_rng(0), 6, 50, 16, spread=4.0)  # same centers
    result = fewshot_accuracy(train, train_labels, test, test_labels, shots=(1, 10), seeds=(0, 1, 2))
    assert list(result) == ["1shot", "10shot"]
    for entry in result.values():
        assert len(entry["per_seed"]) == 3
        assert entry["mean"] == pytest.approx(np.mean(entry["per_seed"]))
        assert entry["std"] == pytest.approx(np.std(entry["per_seed"]))
    assert result["10shot"]["mean"] > result["1shot"]["mean"] > 1 / 6
    again = fewshot_accuracy(train, train_labels, test, test_labels, shots=(1, 10), seeds=(2, 0))
    assert again["1shot"]["per_seed"] == [result["1shot"]["per_seed"][2], result["1shot"]["per_seed"][0]]
    idx = fewshot_indices(train_labels, 6, 10, seed=1)
    expected = np.mean(fit_lsr(train[idx], train_labels[idx], 6, 2.0**10).predict(test) == test_labels)
    assert result["10shot"]["per_seed"][1] == expected


def test_too_few_examples_for_a_shot_count_is_an_error():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 10)
    features = np.zeros((len(labels), 4), dtype=np.float32)
    with pytest.raises(FewShotError) as info:
        fewshot_accuracy(features, labels, features, labels, shots=(1, 5))
    assert str(info.value) == "5-shot evaluation needs 5 training examples of every class, but class 1 has 3"


def features_of(model, loader, preprocess, img_size=16):
    """Pre-logit features (float32) and labels of every batch of `loader`, through the evaluators' one pass."""
    feats, labels = [], []
    for batch, f in forward_batches(model, loader, preprocess, pre_logits, torch.device("cpu"), img_size):
        feats.append(f.float().numpy())
        labels.append(np.asarray(batch["label"]).reshape(-1))
    return np.concatenate(feats), np.concatenate(labels)


def test_the_evaluators_pass_gives_pre_logits_of_every_batch_and_restores_mode():
    model = make_mixer().train()
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    loader = [{"image": images[i : i + 4], "label": torch.arange(i, min(i + 4, 10)), "key": [f"s{j}" for j in
              range(i, min(i + 4, 10))]} for i in range(0, 10, 4)]
    preprocess = lambda x: x.float() / 127.5 - 1.0
    features, labels = features_of(model, loader, preprocess)
    assert model.training
    with torch.no_grad():
        model.eval()
        expected = model.forward_head(model.forward_features(preprocess(images)), pre_logits=True)
    assert features.shape == (10, 32)
    np.testing.assert_array_equal(features, expected.numpy())
    np.testing.assert_array_equal(labels, np.arange(10))
    bf16, _ = features_of(model.to(torch.bfloat16), loader, lambda x: preprocess(x).bfloat16())
    assert np.abs(bf16 - features).max() < 0.1


def test_real_digits_accuracy_grows_with_shots():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target
    result = fewshot_accuracy(x[:1000], y[:1000], x[1000:], y[1000:], shots=(1, 5, 25))
    means = [result[k]["mean"] for k in ("1shot", "5shot", "25shot")]
    assert 0.3 < means[0] < means[1] < means[2] and means[2] > 0.8


class _Counting(torch.nn.Module):
    """A model that counts the images its forward_features sees."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward_features(self, x):
        self.images += len(x)
        return self.model.forward_features(x)

    def forward_head(self, x, pre_logits=False):
        return self.model.forward_head(x, pre_logits=pre_logits)

    @property
    def head(self):
        return self.model.head


@pytest.mark.timeout(120)
def test_evaluator_forwards_only_the_shot_sets_and_matches_the_whole_pool_protocol(tmp_path):
    """The shot sets are chosen by key from the shards' indices: the evaluator decodes and forwards their union (here
    at most 2 seeds x 3 shots x 10 classes of a 300-sample pool) and gets the accuracies of the whole-pool protocol
    (features of every pool sample in key order, then fewshot_accuracy)."""
    from pretrain.cluster.distributed import DistEnv
    from pretrain.config import PretrainConfig
    from pretrain.config.schema import EvalSpec
    from pretrain.data import build_eval_loader, eval_transform, load_manifest
    from pretrain.evaluators.fewshot import FewshotEvaluator
    from tests.helpers_shards import write_dataset

    write_dataset(str(tmp_path / "train"), [130, 70, 100], size=(16, 16))
    write_dataset(str(tmp_path / "val"), [40, 20], size=(16, 16))
    cfg = PretrainConfig()
    cfg.model.img_size, cfg.data.workers = 16, 0
    spec = EvalSpec(type="fewshot", train=str(tmp_path / "train"), val=str(tmp_path / "val"), shots=[1, 3],
                    seeds=[0, 1], batch_size=16, preprocess="resize")
    env = DistEnv(rank=0, local_rank=0, world_size=1, local_world_size=1, node_rank=0, master_addr="", master_port=0,
                  backend="gloo", device=torch.device("cpu"), launcher="none")
    model = _Counting(make_mixer())
    evaluator = FewshotEvaluator("fs", spec, cfg, env)
    result = evaluator(model, lambda x: x.float() / 255)
    assert 0 < model.images - 60 <= 2 * 3 * 10 and model.images - 60 == evaluator.plan.num_samples  # + 60 val

    transform = eval_transform(16, resize="squash")

    def everything(path):
        loader = build_eval_loader(load_manifest(path), batch_size=16, rank=0, world_size=1, workers=0,
                                   transform=transform)
        keys = [k for batch in loader for k in batch["key"]]
        features, labels = features_of(model.model, loader, lambda x: x.float() / 255)
        order = np.argsort(np.array(keys, dtype=object), kind="stable")
        return features[order], labels[order]

    expected = fewshot_accuracy(*everything(tmp_path / "train"), *everything(tmp_path / "val"), shots=(1, 3),
                                seeds=(0, 1), num_classes=10)
    assert result == expected
