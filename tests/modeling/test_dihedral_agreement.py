"""How often a quarter turn or mirror image keeps the model's top-1 (``cv``'s
``dihedral_agreement`` metrics), and the training views of ``--dihedral-views``."""

from __future__ import annotations

import numpy as np

from skin_mlops.modeling import stages
from skin_mlops.modeling.features import dihedral_view_ids, view_ids
from skin_mlops.modeling.options import TrainingOptions


def _identity_head(width: int):
    import keras

    inputs = keras.Input((width,))
    dense = keras.layers.Dense(width, use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([np.eye(width, dtype=np.float32)])
    return model


def test_a_view_whose_top1_differs_lowers_that_transform_s_agreement() -> None:
    # two photos, 8 views, 3 classes: photo 1's view 3 (rot270) points at another class
    features = np.zeros((2, 8, 3), np.float32)
    features[0, :, 0] = 1.0
    features[1, :, 1] = 1.0
    features[1, 3] = [0.0, 0.0, 2.0]
    top1 = stages.dihedral_top1([_identity_head(3)], features, tta_views=1)
    assert top1.tolist() == [[0] * 8, [1, 1, 1, 2, 1, 1, 1, 1]]
    agreement = stages.dihedral_agreement(top1, prefix="oof_")
    assert agreement["oof_dihedral_agreement_3"] == 0.5
    assert all(agreement[f"oof_dihedral_agreement_{k}"] == 1.0 for k in (1, 2, 4, 5, 6, 7))
    assert agreement["oof_dihedral_agreement_min"] == 0.5
    # averaging all 8 transforms inside the model makes every column the same
    averaged = stages.dihedral_top1([_identity_head(3)], features, tta_views=8)
    assert (averaged == averaged[:, :1]).all()
    assert stages.dihedral_agreement(averaged)["dihedral_agreement_min"] == 1.0


def test_dihedral_views_add_the_centre_view_s_seven_transforms() -> None:
    assert TrainingOptions(views=3).train_view_ids() == view_ids(3)
    with_dihedral = TrainingOptions(views=3, dihedral_views=True).train_view_ids()
    assert with_dihedral == view_ids(3) + dihedral_view_ids()[1:]
    assert len(with_dihedral) == 10 and len(set(with_dihedral)) == 10
