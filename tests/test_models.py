"""Tests for `keras_autopruner.models`: builders and width handling."""

import keras
import numpy as np
import pytest

import keras_autopruner as kap
from keras_autopruner import models
from keras_autopruner.gate import gates_of
from keras_autopruner.metrics import count_params

L = keras.layers

TINY = {"block1_conv1": 4, "block1_conv2": 4, "block2_conv1": 8,
        "block2_conv2": 8, "fc1": 16}


def layers_of(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


def test_vgg16_cub_structure():
    # Narrow dense layers keep the test light; the structure is what counts.
    model = models.vgg16_cub(num_classes=200, input_shape=(32, 32, 3),
                             widths={"fc1": 32, "fc2": 32})
    assert len(layers_of(model, L.Conv2D)) == 13
    assert len(layers_of(model, L.Dense)) == 3
    assert len(layers_of(model, L.Dropout)) == 2
    assert len(layers_of(model, L.Flatten)) == 1
    # No average pooling between the convolutions and the dense block.
    assert not any(isinstance(layer, (L.GlobalAveragePooling2D,
                                      L.AveragePooling2D))
                   for layer in model.layers)
    assert model.output_shape == (None, 200)
    widths = models.widths_of(model)
    assert widths["block5_conv3"] == 512 and widths["fc1"] == 32
    assert widths["predictions"] == 200


def test_vgg16_cub_full_size_params():
    # VGG16 has 138,357,544 params with 1000 classes; 200 classes remove
    # 800 output neurons of 4096 inputs plus their biases.
    model = models.vgg16_cub(num_classes=200)
    assert count_params(model) == 138_357_544 - 800 * 4097


def test_vgg16_cub_loads_pretrained_file(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None,
                                      input_shape=(32, 32, 3))
    path = str(tmp_path / "notop.weights.h5")
    source.save_weights(path)
    model = models.vgg16_cub(input_shape=(32, 32, 3), weights=path,
                             widths={"fc1": 8, "fc2": 8})
    for name in ("block1_conv1", "block5_conv3"):
        for a, b in zip(model.get_layer(name).get_weights(),
                        source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_vgg16_cub_refuses_pretrained_for_narrow_convs():
    with pytest.raises(ValueError, match="default convolution widths"):
        models.vgg16_cub(input_shape=(32, 32, 3), weights="imagenet",
                         widths={"block1_conv1": 8})


def test_vgg16_cub_needs_32_pixels():
    with pytest.raises(ValueError, match="at least 32x32"):
        models.vgg16_cub(input_shape=(16, 16, 3))


def test_fc_dnn_structure():
    model = models.fc_dnn(input_dim=16, num_classes=26)
    assert [layer.units for layer in layers_of(model, L.Dense)] == [
        256, 128, 64, 32, 26]
    assert len(layers_of(model, L.BatchNormalization)) == 4
    assert len(layers_of(model, L.Dropout)) == 4
    assert model.input_shape == (None, 16)


def test_widths_as_dict_list_and_errors():
    by_list = models.vgg_small(widths=list(TINY.values()))
    by_dict = models.vgg_small(widths=TINY)
    assert models.widths_of(by_list) == models.widths_of(by_dict)
    partial = models.widths_of(models.vgg_small(widths={"fc1": 7}))
    assert partial["fc1"] == 7 and partial["block1_conv1"] == 16
    with pytest.raises(ValueError, match="does not build"):
        models.vgg_small(widths={"conv9": 3})
    with pytest.raises(ValueError, match="5 prunable layers"):
        models.vgg_small(widths=[4, 4])
    with pytest.raises(ValueError, match="positive integer"):
        models.vgg_small(widths={"fc1": 0})


def test_with_widths_composes():
    narrow = models.with_widths(models.vgg_small, {"fc1": 10})
    narrower = models.with_widths(narrow, {"block1_conv1": 3})
    widths = models.widths_of(narrower(num_classes=5))
    assert widths["fc1"] == 10 and widths["block1_conv1"] == 3
    assert widths["predictions"] == 5
    assert models.default_widths(narrower) == models.VGG_SMALL_WIDTHS


def test_scale_widths_rounds_and_floors():
    assert models.scale_widths({"a": 10, "b": 3, "c": 1}, 0.25) == {
        "a": 2, "b": 1, "c": 1}


def test_match_params_finds_the_closest_factor():
    full = count_params(models.vgg_small())
    target = full // 3
    factor, widths, params = models.match_params(models.vgg_small, target)
    assert 0 < factor < 1
    assert abs(params - target) / target < 0.05
    # Rounding makes the count a step function of the factor; no factor
    # on a grid gets closer than bisection did.
    for f in np.linspace(0.05, 1.0, 40):
        grid = count_params(models.with_widths(
            models.vgg_small, models.scale_widths(
                models.VGG_SMALL_WIDTHS, f))())
        assert abs(grid - target) >= abs(params - target)
    assert params == count_params(models.with_widths(models.vgg_small,
                                                     widths)())
    # All layers shrink by the same factor (up to rounding).
    for name, width in widths.items():
        assert width == max(1, round(models.VGG_SMALL_WIDTHS[name] * factor))


def test_stripped_widths_rebuild_the_same_architecture():
    """What the study's from-scratch baseline relies on."""
    model = models.vgg_small(widths=TINY)
    gated = kap.add_gates(model, target_rate=0.5)
    rng = np.random.default_rng(0)
    for gate in gates_of(gated):
        codes = (rng.random(gate.units) < 0.5).astype("float32")
        codes[0] = 1.0
        gate.moving_code.assign(codes)
    compact = kap.strip(gated)
    widths = {k: v for k, v in models.widths_of(compact).items()
              if k in TINY}
    assert all(widths[k] <= TINY[k] for k in TINY)
    assert sum(widths.values()) < sum(TINY.values())
    rebuilt = models.with_widths(models.vgg_small, widths)()
    assert count_params(rebuilt) == count_params(compact)
    assert [w.shape for w in rebuilt.weights] == [
        w.shape for w in compact.weights]


def test_tf_keras_twin_has_the_same_weights():
    tf_keras = pytest.importorskip("tf_keras")
    ours = models.vgg_small(widths=TINY)
    twin = models.vgg_small(widths=TINY, keras_module=tf_keras)
    assert [tuple(w.shape) for w in ours.get_weights()] == [
        tuple(w.shape) for w in twin.get_weights()]
    twin.set_weights(ours.get_weights())
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0),
                               twin.predict(x, verbose=0), atol=1e-5)


def test_unknown_builder():
    with pytest.raises(ValueError, match="Unknown model"):
        models.get_builder("resnet")


def test_application_builds_every_keras_application_not_only_the_zoo():
    names = models.application_names()
    # Every family representative is one of them, and there are more.
    assert set(models.APPLICATION_FAMILIES) < set(names)
    assert "ResNet101" in names and "EfficientNetV2S" in names
    model, size = models.application("VGG19", classes=7)
    assert size == 32 and model.input_shape == (None, 32, 32, 3)
    assert model.output_shape == (None, 7)
    assert sum(isinstance(layer, keras.layers.Conv2D)
               for layer in model.layers) == 16
    assert models.application("InceptionV3")[1] == 75
    with pytest.raises(ValueError, match="VGG19"):
        models.application("VGG20")
