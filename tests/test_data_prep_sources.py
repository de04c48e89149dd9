"""data_prep.sources / labels / digits: layouts -> (path, class index) lists, and one-line errors."""

import io

import pytest
from PIL import Image

from data_prep.digits import digits_source
from data_prep.errors import DataPrepError
from data_prep.sources import folders_source, imagenet_val_source, list_source
from tests.helpers_data_prep import write_files


def _touch(root, *paths):
    write_files(str(root), {p: b"x" for p in paths})


def test_folders_index_classes_in_sorted_order_and_ignore_hidden_and_top_level_files(tmp_path):
    _touch(tmp_path, "b/1.jpg", "a/2.jpg", "a/sub/3.jpg", "c/.DS_Store", "README.txt", ".hidden/4.jpg")
    source = folders_source(str(tmp_path))
    assert source.classes == ["a", "b", "c"]
    assert source.items == [("a/2.jpg", 0), ("a/sub/3.jpg", 0), ("b/1.jpg", 1)]


def test_folders_take_the_index_from_a_classes_file(tmp_path):
    _touch(tmp_path / "src", "b/1.jpg", "a/2.jpg")
    (tmp_path / "classes.txt").write_text("z\nb first\n\na\n")
    source = folders_source(str(tmp_path / "src"), str(tmp_path / "classes.txt"))
    assert source.classes == ["z", "b", "a"]
    assert source.items == [("a/2.jpg", 2), ("b/1.jpg", 1)]


def test_folders_errors(tmp_path):
    _touch(tmp_path / "src", "b/1.jpg", "q/2.jpg")
    (tmp_path / "classes.txt").write_text("b\n")
    with pytest.raises(
        DataPrepError, match=r"^class folder 'q' is not in classes file .*classes.txt \(1 such"
    ):
        folders_source(str(tmp_path / "src"), str(tmp_path / "classes.txt"))
    _touch(tmp_path / "flat", "1.jpg")
    with pytest.raises(DataPrepError, match="holds no class folders .*use --layout imagenet-val"):
        folders_source(str(tmp_path / "flat"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataPrepError, match="^no files found in the class folders of"):
        folders_source(str(tmp_path / "empty"))
    with pytest.raises(DataPrepError, match="^source folder not found: "):
        folders_source(str(tmp_path / "nowhere"))
    with pytest.raises(DataPrepError, match="^classes file not found: "):
        folders_source(str(tmp_path / "src"), str(tmp_path / "missing.txt"))


VAL_FILES = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3, 4)]
WNIDS = ["n02119789", "n01440764", "n01443537"]  # devkit order: not sorted


def test_imagenet_val_devkit_ground_truth_with_synsets(tmp_path):
    _touch(tmp_path / "val", *VAL_FILES)
    (tmp_path / "gt.txt").write_text("1\n3\n2\n1\n")
    (tmp_path / "synsets.txt").write_text("".join(f"{w} some description\n" for w in WNIDS))
    source = imagenet_val_source(
        str(tmp_path / "val"), str(tmp_path / "gt.txt"), str(tmp_path / "synsets.txt")
    )
    assert source.classes == sorted(WNIDS)
    assert [source.classes[c] for _, c in source.items] == [
        "n02119789",
        "n01443537",
        "n01440764",
        "n02119789",
    ]
    assert [p for p, _ in source.items] == VAL_FILES


def test_imagenet_val_csv_with_a_classes_file(tmp_path):
    _touch(tmp_path / "val", *VAL_FILES)
    labelled = zip((4, 2, 1, 3), WNIDS + WNIDS[:1], strict=True)
    rows = ["ImageId,PredictionString"] + [
        f"ILSVRC2012_val_0000000{i},{w} 1 2 3 4 {w} 5 6 7 8" for i, w in labelled
    ]
    (tmp_path / "val.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "classes.txt").write_text("\n".join(WNIDS) + "\n")
    source = imagenet_val_source(
        str(tmp_path / "val"), str(tmp_path / "val.csv"), classes_file=str(tmp_path / "classes.txt")
    )
    assert source.classes == WNIDS
    assert source.items == list(zip(VAL_FILES, [2, 1, 0, 0], strict=True))


def test_imagenet_val_errors(tmp_path):
    _touch(tmp_path / "val", *VAL_FILES)
    (tmp_path / "gt.txt").write_text("1\n2\n")
    (tmp_path / "synsets.txt").write_text("\n".join(WNIDS))
    val, gt, syn = str(tmp_path / "val"), str(tmp_path / "gt.txt"), str(tmp_path / "synsets.txt")
    with pytest.raises(DataPrepError, match=r"^labels file .*gt.txt has 2 labels but .*val holds 4 files"):
        imagenet_val_source(val, gt, syn)
    with pytest.raises(
        DataPrepError, match="holds ILSVRC ids; give the synset list they index with --synsets"
    ):
        imagenet_val_source(val, gt)
    with pytest.raises(DataPrepError, match="^labels file not found: "):
        imagenet_val_source(val, str(tmp_path / "nope.txt"), syn)
    (tmp_path / "gt.txt").write_text("1\n2\n7\n1\n")
    with pytest.raises(DataPrepError, match=r"gt.txt line 3: '7' is not an id in 1..3"):
        imagenet_val_source(val, gt, syn)
    (tmp_path / "val.csv").write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(DataPrepError, match=r"has no row for ILSVRC2012_val_00000002.JPEG \(3 such files\)"):
        imagenet_val_source(val, str(tmp_path / "val.csv"))
    _touch(tmp_path / "trainlike", "n01440764/a.JPEG")
    with pytest.raises(DataPrepError, match=r"holds class folders \(n01440764/...\).*use --layout folders"):
        imagenet_val_source(str(tmp_path / "trainlike"), gt, syn)


def test_list_with_names_ints_header_and_commas(tmp_path):
    _touch(tmp_path, "x.jpg")
    (tmp_path / "names.tsv").write_text("path\tlabel\n# comment\na/1.jpg\tdog\n\nb, 2.jpg\tcat\n")
    source = list_source(str(tmp_path), str(tmp_path / "names.tsv"))
    assert (source.classes, source.items) == (["cat", "dog"], [("a/1.jpg", 1), ("b, 2.jpg", 0)])
    (tmp_path / "ints.csv").write_text("a,1.jpg,3\nb.jpg,0\n")
    source = list_source(str(tmp_path), str(tmp_path / "ints.csv"))
    assert (source.classes, source.items) == (["0", "1", "2", "3"], [("a,1.jpg", 3), ("b.jpg", 0)])


def test_list_unknown_class_names_the_line(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "l.tsv").write_text("a.jpg\tdog\nb.jpg\t1\n\nc.jpg\tcow\n")
    with pytest.raises(DataPrepError) as info:
        list_source(str(tmp_path), str(tmp_path / "l.tsv"), str(tmp_path / "classes.txt"))
    assert str(info.value) == f"list file {tmp_path / 'l.tsv'} line 4: unknown class 'cow'"
    (tmp_path / "l.tsv").write_text("a.jpg\tdog\nb.jpg\t2\n")
    with pytest.raises(DataPrepError, match="line 2: unknown class '2'"):
        list_source(str(tmp_path), str(tmp_path / "l.tsv"), str(tmp_path / "classes.txt"))
    (tmp_path / "l.tsv").write_text("a.jpg dog\n")
    with pytest.raises(DataPrepError, match=r"line 1: expected 'path<TAB>label' or 'path,label'"):
        list_source(str(tmp_path), str(tmp_path / "l.tsv"))


def test_digits_split_is_stratified_disjoint_and_complete():
    train = digits_source("train", 0.2, 32)
    val = digits_source("val", 0.2, 32)
    assert (len(train.items), len(val.items)) == (1438, 359)
    assert not {p for p, _ in train.items} & {p for p, _ in val.items}
    per_class = [sum(c == k for _, c in val.items) for k in range(10)]
    totals = [sum(c == k for _, c in train.items + val.items) for k in range(10)]
    assert per_class == [round(n * 0.2) for n in totals]
    assert digits_source("val", 0.2, 32).items == val.items


def test_digits_render_as_rgb_png_dark_on_white():
    source = digits_source("train", 0.2, 40)
    image = Image.open(io.BytesIO(source.reader.read(source.items[0][0])))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 40))
    corner, darkest = image.getpixel((0, 0)), min(image.convert("L").getdata())
    assert corner == (255, 255, 255) and darkest < 60
