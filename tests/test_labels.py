"""Labels: nnU-Net's label rules in one object, checked against values worked out by hand."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pgps_data.errors import PGPSInputError
from pgps_data.labels import Labels
from pgps_data.store.store import open_store

BRATS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3], "ignore": 4}
PLAIN = {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}


def brats() -> Labels:
    return Labels(BRATS, regions_class_order=[1, 2, 3])


# ------------------------------------------------------------------------- the rules


def test_regions_need_a_list_of_more_than_one_value() -> None:
    # nnU-Net's has_regions: a one-value list alone is a plain label (softmax) ...
    one = Labels({"background": 0, "organ": [1], "lesion": 2})
    assert not one.has_regions and one.nonlinearity == "softmax"
    assert one.output_channels == [0, 1, 2] and one.regions == []
    # ... but next to a real region it is a region of its own (BraTS' enhancing tumour)
    labels = brats()
    assert labels.has_regions and labels.nonlinearity == "sigmoid"
    assert labels.regions == [(1, 2, 3), (2, 3), (3,)]


def test_brats_like_values_outputs_and_scores() -> None:
    labels = brats()
    assert labels.ignore_label == 4
    assert labels.all_values == [0, 1, 2, 3, 4] and labels.foreground_values == [1, 2, 3]
    assert labels.output_channels == [[1, 2, 3], [2, 3], [3]] and labels.num_outputs == 3
    assert labels.forced_classes() == [(1, 2, 3), (2, 3), (3,)]
    assert labels.scored() == {"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}


def test_softmax_values_outputs_and_scores() -> None:
    labels = Labels(PLAIN)
    assert labels.ignore_label == 3 and labels.foreground_values == [1, 2]
    assert labels.output_channels == [0, 1, 2] and labels.num_outputs == 3
    assert labels.forced_classes() == [(1,), (2,)]
    assert labels.scored() == {"organ": [1], "lesion": [2]}


def test_class_lut_by_hand() -> None:
    lut = Labels({"background": 0, "b": 5, "a": 2, "ignore": 7}).class_lut()
    assert lut.shape == (256,) and lut.dtype == np.int64
    # foreground values ascending: 2 → 1, 5 → 2; the ignore value one past the last class
    assert [lut[v] for v in (0, 2, 5, 7)] == [0, 1, 2, 3]
    assert lut[9] == 0  # an undeclared value is background
    assert Labels({"background": 0, "a": 2}).class_lut()[2] == 1


def test_region_lut_by_hand() -> None:
    lut = brats().region_lut()
    assert lut.shape == (256, 3)
    assert lut[0].tolist() == [False, False, False]
    assert lut[1].tolist() == [True, False, False]
    assert lut[2].tolist() == [True, True, False]
    assert lut[3].tolist() == [True, True, True]
    assert lut[4].tolist() == [False, False, False]  # ignore is in no region


def test_label_map_paints_regions_in_order() -> None:
    # five voxels; rows: whole, core, enhancing
    probs = np.array([[0.9, 0.9, 0.9, 0.4, 0.6],
                      [0.2, 0.7, 0.7, 0.9, 0.5],
                      [0.1, 0.1, 0.8, 0.9, 0.1]], np.float32).reshape(3, 1, 1, 5)
    # v0 whole → 1; v1 whole then core → 2; v2 all → 3; v3 not whole, core then enhancing
    # → 3 (later regions win); v4 whole, core at exactly 0.5 is not > 0.5 → 1
    assert brats().label_map(probs).ravel().tolist() == [1, 2, 3, 3, 1]
    # another order paints other values: enhancing first, so whole overwrites it
    other = Labels(BRATS, regions_class_order=[3, 2, 1])
    assert other.label_map(probs).ravel().tolist() == [3, 2, 1, 1, 3]
    assert brats().label_map(probs).dtype == np.uint8


def test_label_map_softmax_takes_the_value_of_the_argmax() -> None:
    labels = Labels({"background": 0, "b": 5, "a": 2})  # channels: 0, 2, 5
    probs = np.array([[0.6, 0.1, 0.2], [0.3, 0.8, 0.3], [0.1, 0.1, 0.5]]).reshape(3, 1, 1, 3)
    assert labels.label_map(probs).ravel().tolist() == [0, 2, 5]
    with pytest.raises(ValueError, match="2 probability channels"):
        labels.label_map(probs[:2])


# ----------------------------------------------------------------- value semantics


def test_json_and_process_round_trips() -> None:
    """Through JSON (the store's attributes) and to a worker process and back (conversion
    and loader workers get Labels pickled by value)."""
    loose = Labels({"background": 0, "whole": [1, 2], "core": 2})  # scoring only: no order
    every = (brats(), Labels(PLAIN), Labels({"background": 0, "a": [1], "b": 2}), loose)
    for labels in every[:3]:
        again = Labels.from_dict(json.loads(json.dumps(labels.to_dict())))
        assert again == labels and hash(again) == hash(labels)
        assert again.declared == labels.declared  # [3] stays a list, 2 stays an int
    with ProcessPoolExecutor(1) as worker:  # copy.copy in the worker: sent there and back
        assert list(worker.map(copy.copy, every)) == list(every)
    assert brats().to_dict() == {"labels": BRATS, "label_values": [1, 2, 3], "ignore_label": 4,
                                 "regions_class_order": [1, 2, 3]}


def test_immutable() -> None:
    labels = brats()
    with pytest.raises(AttributeError):
        labels.regions_class_order = [3, 2, 1]  # type: ignore[misc]
    labels.declared["whole"].append(9)  # a copy: the object does not change
    labels.regions_class_order.append(9)  # type: ignore[union-attr]
    assert labels.regions[0] == (1, 2, 3) and labels.regions_class_order == [1, 2, 3]


# ---------------------------------------------------------------- bad declarations


@pytest.mark.parametrize(("labels", "order", "words"), [
    ({"background": 0, "whole": [1, 2], "core": 2}, [1],
     "'regions_class_order' has 1 value(s) but the labels declare 2 region(s) (whole, core)"),
    ({"background": 0, "a": 1, "ignore": [3, 4]}, None, "'ignore' label must be a single"),
    ({"background": 0, "a": 300}, None, "label values must lie in 0..255"),
    ({"background": 0, "a": 1, "b": 1}, None, "label value 1 is declared twice ('a' and 'b')"),
    ({"background": 0, "a": "one"}, None, "label 'a' must be an integer or a list of them"),
    ({"background": 0, "a": True}, None, "label 'a' must be an integer"),
    ({"background": 0, "whole": [1, 2]}, ["x"], "'regions_class_order' must be a list of integers"),
])
def test_bad_labels_are_one_line(labels: dict, order: list | None, words: str) -> None:
    with pytest.raises(PGPSInputError) as err:
        Labels.from_dataset_json({"labels": labels, "regions_class_order": order}, "ds.json")
    msg = str(err.value)
    assert msg.startswith("ds.json: ") and words in msg and "\n" not in msg


def test_regions_need_their_order_to_train_and_paint_not_to_score() -> None:
    loose = {"background": 0, "whole": [1, 2], "core": 2}
    labels = Labels.from_dataset_json({"labels": loose}, "ds.json")
    assert labels.scored() == {"whole": [1, 2], "core": [2]} and labels.num_outputs == 2
    words = "region labels need 'regions_class_order'"
    with pytest.raises(PGPSInputError, match=words):
        labels.label_map(np.zeros((2, 1, 1, 1)))
    with pytest.raises(PGPSInputError, match=f"model.json: {words}"):
        Labels.from_dict({"labels": loose}, where="model.json")  # what trains or predicts


def test_ignore_label_given_twice_must_agree() -> None:
    assert Labels({"background": 0, "a": 1}, ignore_label=3).ignore_label == 3
    with pytest.raises(PGPSInputError, match="'ignore_label' 5 disagrees with the 'ignore' label 3"):
        Labels(PLAIN, ignore_label=5)


def test_label_values_that_disagree_are_refused() -> None:
    for bad in ([1], "12", [1, "2"]):
        with pytest.raises(PGPSInputError, match=r"model.json: label_values .* disagree"):
            Labels.from_dict({"labels": PLAIN, "label_values": bad}, where="model.json")


def test_msd_form_and_files(tmp_path: Path) -> None:
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "organ", "2": "ignore"}}))
    labels = Labels.from_json_file(msd)
    assert labels.declared == {"background": 0, "organ": 1, "ignore": 2}
    assert labels.ignore_label == 2 and labels.scored() == {"organ": [1]}
    twice = tmp_path / "twice.json"
    twice.write_text('{"labels": {"0": "background", "1": "a", "1": "b"}}')
    with pytest.raises(PGPSInputError, match=r"twice.json: label value 1 is declared twice"):
        Labels.from_json_file(twice)
    with pytest.raises(PGPSInputError, match=r"none.json: missing \(give a dataset.json"):
        Labels.from_json_file(tmp_path / "none.json")


# --------------------------------------------------------------- the store, sampling


def test_store_attrs_are_to_dict(tiny_store: Path) -> None:
    """What convert wrote reads back as Labels and writes back the same attrs (the store
    format does not change)."""
    store = open_store(tiny_store)
    labels = Labels.from_store(store)
    keys = ("labels", "label_values", "ignore_label", "regions_class_order")
    assert labels.to_dict() == {k: store.meta.get(k) for k in keys}
    assert labels.foreground_values == store.label_values


def test_forced_classes_of_a_store_by_hand(tiny_store: Path) -> None:
    assert Labels.from_store(open_store(tiny_store)).forced_classes() == [(1,), (2,)]
    # a value in two regions counts once per region; a region named twice once
    labels = Labels({"background": 0, "whole": [2, 1], "core": 2, "again": [2, 1]},
                    regions_class_order=[1, 2, 1])
    assert labels.forced_classes() == [(2, 1), (2,)]
