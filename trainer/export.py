"""SavedModel exports that hold what their signatures capture, not the Keras objects.

``tf.saved_model.save`` of a module that tracks a Keras model also serializes the model for
Keras to rebuild it: it traces a default signature of the model and every layer's call, which
nothing here loads (serving, the RankingTrainer and the evaluator call the signatures). On
MovieLens 100K that was ~6 of the ~8 s the Trainer spent exporting its two towers. An
:class:`Export` keeps the Keras objects for tracing its functions, out of the saved object
graph, and tracks their variables and the Transform graph's resources (its tables and
vocabulary assets) instead; the signatures' outputs are the same (tests/test_export.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf


def transform_resources(tft_layer) -> object:
    """What the graph of a ``TFTransformOutput.transform_features_layer()`` captures (its loaded
    Transform SavedModel: tables, vocabulary files), to track instead of the Keras layer. The
    attribute is the one the layer itself tracks it by (tensorflow_transform 1.16); without it,
    the layer (serialized by Keras, slower to save, the same signatures)."""
    found = getattr(tft_layer, "_saved_model_loader_tracked_dict", None)
    return found if found is not None else tft_layer


class Export(tf.Module):
    """A module whose saved graph holds ``variables``, the Transform resources of ``tft_layer``
    and ``resources`` (e.g. lookup tables a Keras model uses), while the Keras objects its
    functions call stay untracked attributes (``keras``: name -> object)."""

    def __init__(self, keras: dict, tft_layer, variables: Iterable[tf.Variable],
                 resources: Iterable = ()):
        super().__init__()
        for name, obj in keras.items():
            setattr(self, name, self._no_dependency(obj))
        self.saved_variables = list(variables)
        self.transform = transform_resources(tft_layer)
        self.saved_resources = list(resources)
