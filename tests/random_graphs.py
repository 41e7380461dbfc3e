"""Random small functional models over many layer types, from a seed.

`random_model(seed)` builds one model: a 2-D image, 1-D sequence or flat
input (sometimes a second input joined by `Concatenate`), a chain and tree
of producer layers (Conv2D with strides and groups, SeparableConv2D,
DepthwiseConv2D, Conv2DTranspose, Conv1D, DepthwiseConv1D, Dense, a nested
Sequential), each followed at random by a normalisation (batch, layer,
group, unit), an activation (including channel-coupled ones: softmax,
log_softmax), PReLU, Dropout, and merged by Add, Subtract, Multiply,
Average, Maximum, Concatenate, squeeze-and-excitation, pooling, padding,
cropping, upsampling, Reshape, Permute, Lambda and Rescaling; a Flatten,
global pooling or GRU; then a Dense head and one or two outputs.

Every choice comes from `random.Random(seed)`, so a failing seed is
rebuilt exactly. `LAYER_TYPES` lists the class names the tests expect the
seeds in use to cover between them.
"""

import random

import keras
import numpy as np

L = keras.layers

ACTIVATIONS = [None, "relu", "tanh", "gelu", "swish", "sigmoid", "softplus",
               "elu", "relu6", "hard_swish", "leaky_relu", "softmax",
               "log_softmax", "selu", "mish", "linear", "hard_sigmoid"]

# Layer classes some seed of the test's range must produce.
LAYER_TYPES = {
    "Conv2D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose",
    "Conv1D", "DepthwiseConv1D", "Dense", "Sequential",
    "BatchNormalization", "LayerNormalization", "GroupNormalization",
    "UnitNormalization", "Softmax", "PReLU", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Concatenate", "Reshape", "Lambda", "Rescaling",
    "GRU", "Flatten",
}


class _Builder:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.count = 0

    def name(self, prefix):
        self.count += 1
        return f"{prefix}{self.count}"

    def producer(self, h, kind, width):
        r, act = self.r, self.r.choice(ACTIVATIONS)
        if kind == "conv2d":
            choice = r.choice(["conv", "conv", "sep", "dw", "convT", "dense"])
            if choice == "conv":
                cin = h.shape[-1]
                groups = (2 if cin % 2 == 0 and width % 2 == 0
                          and r.random() < 0.3 else 1)
                strides = r.choice([1, 1, 2]) if h.shape[1] > 3 else 1
                return L.Conv2D(width, r.choice([1, 3]), padding="same",
                                strides=strides, groups=groups,
                                activation=act, use_bias=r.random() < 0.8,
                                name=self.name("conv"))(h)
            if choice == "sep":
                return L.SeparableConv2D(width, 3, padding="same",
                                         activation=act,
                                         name=self.name("sep"))(h)
            if choice == "dw":
                return L.DepthwiseConv2D(
                    3, padding="same", depth_multiplier=r.choice([1, 1, 2]),
                    activation=act, name=self.name("dw"))(h)
            if choice == "convT":
                return L.Conv2DTranspose(width, 3, padding="same",
                                         activation=act,
                                         name=self.name("convT"))(h)
            return L.Dense(width, activation=act, name=self.name("pw"))(h)
        if kind == "conv1d":
            choice = r.choice(["conv", "conv", "dense", "dw", "dw"])
            if choice == "conv":
                return L.Conv1D(width, r.choice([1, 3]), padding="same",
                                activation=act, name=self.name("conv"))(h)
            if choice == "dw":
                return L.DepthwiseConv1D(3, padding="same", activation=act,
                                         name=self.name("dw"))(h)
            return L.Dense(width, activation=act, name=self.name("pw"))(h)
        if r.random() < 0.1:
            return keras.Sequential(
                [L.Dense(width, activation=act), L.Dense(width)],
                name=self.name("seq"))(h)
        return L.Dense(width, activation=act, name=self.name("fc"))(h)

    def after(self, h):
        r, t = self.r, self.r.random()
        if t < 0.3:
            h = L.BatchNormalization(name=self.name("bn"))(h)
        elif t < 0.38:
            h = L.LayerNormalization(name=self.name("ln"))(h)
        elif t < 0.42 and h.shape[-1] % 2 == 0:
            h = L.GroupNormalization(groups=2, name=self.name("gn"))(h)
        elif t < 0.45:
            h = L.UnitNormalization(name=self.name("un"))(h)
        elif t < 0.48:
            h = L.Softmax(name=self.name("sm"))(h)
        elif t < 0.54:
            h = L.PReLU(name=self.name("prelu"))(h)
        if r.random() < 0.4:
            h = L.Activation(r.choice([a for a in ACTIVATIONS if a]),
                             name=self.name("act"))(h)
        if r.random() < 0.15:
            h = L.Dropout(0.1, name=self.name("drop"))(h)
        return h

    def block(self, src, kind):
        """One new tensor from `src`, or None where the op does not apply."""
        r, c = self.r, src.shape[-1]
        op = r.choice(["prod", "prod", "add", "sub", "mul", "avg", "max",
                       "cat", "pool", "se", "pad", "up", "lambda",
                       "rescale", "reshape", "permute"])
        if op == "prod":
            return self.after(self.producer(src, kind, r.randint(2, 6)))
        if op in ("add", "sub", "mul", "avg", "max"):
            merge = dict(add=L.Add, sub=L.Subtract, mul=L.Multiply,
                         avg=L.Average, max=L.Maximum)[op]
            other = self.after(self.producer(src, kind, c))
            return merge(name=self.name(op))([src, other])
        if op == "cat":
            other = self.after(self.producer(src, kind, r.randint(2, 6)))
            return L.Concatenate(name=self.name("cat"))([src, other])
        if op == "lambda":
            return L.Lambda(lambda t: 2.0 * t, name=self.name("lam"))(src)
        if op == "rescale":
            return L.Rescaling(0.5, 0.1, name=self.name("resc"))(src)
        if op == "reshape":
            inner = tuple(src.shape[1:-1])
            split = inner + ((c // 2, 2) if c % 2 == 0 else (c,))
            h = L.Reshape(split, name=self.name("resh"))(src)
            return L.Reshape(tuple(src.shape[1:]), name=self.name("resh"))(h)
        if kind == "dense":
            return None
        if op == "pool":
            pools = ([L.MaxPooling2D, L.AveragePooling2D] if kind == "conv2d"
                     else [L.MaxPooling1D, L.AveragePooling1D])
            return r.choice(pools)(2, padding="same",
                                   name=self.name("pool"))(src)
        if op == "se":
            pool = (L.GlobalAveragePooling2D if kind == "conv2d"
                    else L.GlobalAveragePooling1D)(keepdims=True)
            g = L.Dense(r.randint(2, 4), activation="relu",
                        name=self.name("se_r"))(pool(src))
            g = L.Dense(c, activation="sigmoid", name=self.name("se_e"))(g)
            return L.Multiply(name=self.name("se_mul"))([src, g])
        if op == "pad":
            if kind == "conv1d":
                return L.ZeroPadding1D(1, name=self.name("pad"))(src)
            if r.random() < 0.5 or src.shape[1] < 4:
                return L.ZeroPadding2D(1, name=self.name("pad"))(src)
            return L.Cropping2D(1, name=self.name("crop"))(src)
        if op == "up":
            if kind != "conv2d":
                return None
            return L.UpSampling2D(2, name=self.name("up"))(src)
        if kind != "conv1d":
            return None
        h = L.Permute((2, 1), name=self.name("perm"))(src)
        return L.Permute((2, 1), name=self.name("perm"))(h)

    def model(self):
        r = self.r
        kind = r.choice(["conv2d", "conv1d", "dense"])
        shape = {"conv2d": (8, 8, 3), "conv1d": (10, 4), "dense": (7,)}[kind]
        inputs = [keras.Input(shape)]
        x = inputs[0]
        if r.random() < 0.25:
            inputs.append(keras.Input(shape[:-1] + (2,)))
            x = L.Concatenate(name=self.name("cat"))(inputs)
        tensors = [self.after(self.producer(x, kind, r.randint(2, 6)))]
        for _ in range(r.randint(1, 5)):
            new = self.block(tensors[r.randrange(len(tensors))], kind)
            if new is not None:
                tensors.append(new)
        h = tensors[-1]
        if kind == "conv1d" and r.random() < 0.3:
            h = L.GRU(4, name=self.name("gru"))(h)
        elif kind != "dense":
            if r.random() < 0.5:
                h = L.Flatten(name=self.name("flat"))(h)
            elif kind == "conv2d":
                h = L.GlobalAveragePooling2D(name=self.name("gap"))(h)
            else:
                h = L.GlobalMaxPooling1D(name=self.name("gmp"))(h)
        return self.head(inputs, h)

    def head(self, inputs, h):
        """A Dense layer, then one or two outputs: the model."""
        r = self.r
        h = L.Dense(r.randint(2, 6), activation=r.choice(["relu", "tanh"]),
                    name=self.name("fc"))(h)
        # A random bias keeps the outputs away from 0 when few units live.
        outs = [L.Dense(3, bias_initializer="random_normal", name="out")(h)]
        if r.random() < 0.2:
            outs.append(L.Dense(2, bias_initializer="random_normal",
                                name="out2")(h))
        return keras.Model(inputs, outs if len(outs) > 1 else outs[0])


def random_model(seed):
    """The random model of `seed` (see the module docstring)."""
    return _Builder(seed).model()


def layer_types(model):
    """Class names of `model`'s layers, nested models included."""
    names = set()
    for layer in model.layers:
        names.add(type(layer).__name__)
        if isinstance(layer, keras.Model):
            names |= layer_types(layer)
    return names


def randomize_batch_norms(model, rng):
    """Non-trivial batch-norm parameters and statistics, so that a wrong
    slice or a lost shift shows in the outputs."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomize_batch_norms(layer, rng)
        elif isinstance(layer, L.BatchNormalization):
            layer.set_weights([
                rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
                if v.name in ("gamma", "moving_variance")
                else rng.normal(0, 0.5, w.shape).astype(np.float32)
                for v, w in zip(layer.weights, layer.get_weights())
            ])


# The extended generator: the layer types above and 42 more.

EXTENDED_LAYER_TYPES = {
    "Conv3D", "Conv3DTranspose", "SeparableConv1D", "Conv1DTranspose",
    "TimeDistributed", "EinsumDense", "ReLU", "LeakyReLU", "ELU",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "Identity",
    "ActivityRegularization", "SpatialDropout1D", "SpatialDropout2D",
    "RMSNormalization", "Minimum", "Masking", "LSTM", "SimpleRNN",
    "Bidirectional", "MultiHeadAttention", "Attention", "UpSampling1D",
    "Cropping1D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
    "AdaptiveAveragePooling2D", "Resizing", "CenterCrop", "Dot",
    "Functional", "RepeatVector", "MaxPooling3D", "AveragePooling3D",
    "ZeroPadding3D", "Cropping3D", "UpSampling3D", "GlobalAveragePooling3D",
    "GlobalMaxPooling3D", "Normalization",
}


class _Extended(_Builder):
    """More layer types, and a 3-D (volume) input kind."""

    def producer(self, h, kind, width):
        r, act = self.r, self.r.choice(ACTIVATIONS)
        if kind == "conv3d":
            choice = r.choice(["conv", "conv", "convT", "dense"])
            if choice == "conv":
                return L.Conv3D(width, r.choice([1, 3]), padding="same",
                                activation=act, name=self.name("c3"))(h)
            if choice == "convT":
                strides = r.choice([1, 2]) if h.shape[1] <= 4 else 1
                return L.Conv3DTranspose(width, 2, padding="same",
                                         strides=strides, activation=act,
                                         name=self.name("c3T"))(h)
            return L.Dense(width, activation=act, name=self.name("pw"))(h)
        long_enough = h.shape[1] >= 4
        if kind == "conv1d" and r.random() < 0.5:
            choice = r.choice(["sep", "convT", "dilated", "causal", "valid",
                               "strided", "groups", "td", "einsum"])
            conv = dict(activation=act, name=self.name(choice))
            if choice == "sep":
                return L.SeparableConv1D(width, 3, padding="same",
                                         depth_multiplier=r.choice([1, 2]),
                                         **conv)(h)
            if choice == "convT":
                return L.Conv1DTranspose(width, 3, padding="same", **conv)(h)
            if choice == "dilated":
                return L.Conv1D(width, 3, padding="same", dilation_rate=2,
                                **conv)(h)
            if choice == "causal":
                return L.Conv1D(width, 3, padding="causal", **conv)(h)
            if choice == "valid" and long_enough:
                return L.Conv1D(width, 3, padding="valid", **conv)(h)
            if choice == "strided" and long_enough:
                return L.Conv1D(width, 3, strides=2, padding="same",
                                **conv)(h)
            if (choice == "groups" and h.shape[-1] % 2 == 0
                    and width % 2 == 0):
                return L.Conv1D(width, 1, groups=2, **conv)(h)
            if choice == "td":
                return L.TimeDistributed(L.Dense(width, activation=act),
                                         name=conv["name"])(h)
            if choice == "einsum":
                return L.EinsumDense("abc,cd->abd",
                                     output_shape=(h.shape[1], width),
                                     bias_axes="d", name=conv["name"])(h)
        if kind == "conv2d" and r.random() < 0.4:
            choice = r.choice(["dilated", "valid", "sep2", "convT2"])
            conv = dict(activation=act, name=self.name(choice))
            if choice == "dilated":
                return L.Conv2D(width, 3, padding="same", dilation_rate=2,
                                **conv)(h)
            if choice == "valid" and long_enough:
                return L.Conv2D(width, 3, padding="valid", **conv)(h)
            if choice == "sep2":
                return L.SeparableConv2D(width, 3, padding="same",
                                         depth_multiplier=2, **conv)(h)
            if choice == "convT2" and h.shape[1] <= 8:
                return L.Conv2DTranspose(width, 2, strides=2, **conv)(h)
        return super().producer(h, kind, width)

    def after(self, h):
        r, t = self.r, self.r.random()
        if t < 0.06:
            h = L.ReLU(max_value=r.choice([None, 6.0]),
                       negative_slope=r.choice([0.0, 0.1]),
                       threshold=r.choice([0.0, 0.0, 0.2]),
                       name=self.name("relu"))(h)
        elif t < 0.1:
            h = L.LeakyReLU(0.2, name=self.name("lrelu"))(h)
        elif t < 0.13:
            h = L.ELU(name=self.name("elu"))(h)
        elif t < 0.2:
            cls = r.choice([L.GaussianNoise, L.GaussianDropout,
                            L.AlphaDropout, L.Identity,
                            L.ActivityRegularization])
            args = (0.1,) if cls in (L.GaussianNoise, L.GaussianDropout,
                                     L.AlphaDropout) else ()
            h = cls(*args, name=self.name("noise"))(h)
        elif t < 0.24 and len(h.shape) in (3, 4):
            cls = L.SpatialDropout1D if len(h.shape) == 3 else (
                L.SpatialDropout2D)
            h = cls(0.1, name=self.name("sdrop"))(h)
        elif t < 0.27:
            h = L.RMSNormalization(name=self.name("rms"))(h)
        return super().after(h)

    def block(self, src, kind):
        r, c = self.r, src.shape[-1]
        if kind == "conv3d":
            return self._block3d(src)
        t = r.random()
        if t < 0.05:
            other = self.after(self.producer(src, kind, c))
            return L.Minimum(name=self.name("min"))([src, other])
        if kind == "conv1d":
            if t < 0.1:
                return L.Masking(0.0, name=self.name("mask"))(src)
            if t < 0.16:
                cell = r.choice([L.LSTM, L.SimpleRNN, L.GRU])(
                    r.randint(2, 5), return_sequences=True,
                    name=self.name("rnn"))
                if r.random() < 0.5:
                    return L.Bidirectional(cell, name=self.name("bi"))(src)
                return cell(src)
            if t < 0.2:
                return L.MultiHeadAttention(2, 3, name=self.name("mha"))(
                    src, src)
            if t < 0.23:
                return L.UpSampling1D(2, name=self.name("up1"))(src)
            if t < 0.26 and src.shape[1] >= 4:
                return L.Cropping1D(1, name=self.name("crop1"))(src)
            if t < 0.28:
                return L.Attention(name=self.name("att"))([src, src])
            if t < 0.3:
                g = L.GlobalMaxPooling1D(keepdims=True)(src)
                return L.Multiply(name=self.name("gm"))([src, g])
        if kind == "conv2d":
            if t < 0.1:
                return L.Permute((2, 1, 3), name=self.name("perm"))(src)
            if t < 0.14 and src.shape[1] >= 4:
                return L.AdaptiveAveragePooling2D(
                    (2, 2), name=self.name("adapt"))(src)
            if t < 0.17:
                return L.Resizing(src.shape[1], src.shape[2],
                                  name=self.name("resize"))(src)
            if t < 0.2 and src.shape[1] >= 4:
                return L.CenterCrop(src.shape[1] - 2, src.shape[2] - 2,
                                    name=self.name("ccrop"))(src)
            if t < 0.23:
                g = L.GlobalMaxPooling2D(keepdims=True)(src)
                return L.Multiply(name=self.name("gm"))([src, g])
        if kind == "dense":
            if t < 0.1:
                other = self.after(self.producer(src, kind, c))
                return L.Dot(axes=-1, name=self.name("dot"))([src, other])
            if t < 0.14:
                inner = keras.Input((c,))
                h = L.Dense(r.randint(2, 6), activation="relu")(inner)
                h = L.BatchNormalization()(h)
                return keras.Model(inner, L.Dense(r.randint(2, 6))(h),
                                   name=self.name("sub"))(src)
            if t < 0.18:
                shared = L.Dense(c, activation="tanh",
                                 name=self.name("shared"))
                return L.Add(name=self.name("add"))(
                    [shared(src), shared(shared(src))])
            if t < 0.22:
                h = L.RepeatVector(3, name=self.name("rep"))(src)
                h = L.Conv1D(r.randint(2, 5), 1, name=self.name("rc"))(h)
                return L.Flatten(name=self.name("rf"))(h)
        return super().block(src, kind)

    def _block3d(self, src):
        r, c = self.r, src.shape[-1]
        op = r.choice(["prod", "prod", "add", "cat", "pool", "se", "pad",
                       "crop", "up"])
        if op == "pool":
            return r.choice([L.MaxPooling3D, L.AveragePooling3D])(
                2, padding="same", name=self.name("pool3"))(src)
        if op == "pad":
            return L.ZeroPadding3D(1, name=self.name("pad3"))(src)
        if op == "crop" and src.shape[1] >= 4:
            return L.Cropping3D(1, name=self.name("crop3"))(src)
        if op == "up" and src.shape[1] <= 4:
            return L.UpSampling3D(2, name=self.name("up3"))(src)
        if op == "se":
            g = L.GlobalAveragePooling3D(keepdims=True)(src)
            g = L.Dense(3, activation="relu", name=self.name("se_r"))(g)
            g = L.Dense(c, activation="sigmoid", name=self.name("se_e"))(g)
            return L.Multiply(name=self.name("se_mul"))([src, g])
        if op == "add":
            other = self.after(self.producer(src, "conv3d", c))
            return L.Add(name=self.name("add"))([src, other])
        if op == "cat":
            other = self.after(self.producer(src, "conv3d", r.randint(2, 5)))
            return L.Concatenate(name=self.name("cat"))([src, other])
        if op == "prod":
            return self.after(self.producer(src, "conv3d", r.randint(2, 6)))
        return None

    def model(self):
        r = self.r
        kind = r.choice(["conv2d", "conv1d", "conv1d", "dense", "conv3d"])
        shape = {"conv2d": (8, 8, 3), "conv1d": (10, 4), "dense": (7,),
                 "conv3d": (4, 4, 4, 2)}[kind]
        inputs = [keras.Input(shape)]
        x = inputs[0]
        if r.random() < 0.15:
            n = shape[-1]
            x = L.Normalization(mean=np.linspace(-1, 1, n),
                                variance=np.linspace(0.5, 2, n),
                                name=self.name("norm"))(x)
        if r.random() < 0.25:
            inputs.append(keras.Input(shape[:-1] + (2,)))
            x = L.Concatenate(name=self.name("cat"))([x, inputs[1]])
        tensors = [self.after(self.producer(x, kind, r.randint(2, 6)))]
        for _ in range(r.randint(1, 6)):
            try:
                new = self.block(tensors[r.randrange(len(tensors))], kind)
            except ValueError:
                # A merge of a strided or unpadded branch with its source:
                # shapes differ; the layers made for it stay outside the
                # model.
                new = None
            if new is not None:
                tensors.append(new)
        h = tensors[-1]
        t = r.random()
        if kind == "conv1d" and t < 0.3:
            h = r.choice([L.GRU, L.LSTM, L.SimpleRNN])(
                4, name=self.name("rnn"))(h)
        elif kind == "conv3d":
            h = r.choice([L.GlobalAveragePooling3D, L.GlobalMaxPooling3D,
                          L.Flatten])(name=self.name("g3"))(h)
        elif kind != "dense":
            if t < 0.5:
                h = L.Flatten(name=self.name("flat"))(h)
            else:
                pools = ([L.GlobalAveragePooling2D, L.GlobalMaxPooling2D]
                         if kind == "conv2d" else
                         [L.GlobalMaxPooling1D, L.GlobalAveragePooling1D])
                h = r.choice(pools)(name=self.name("gpool"))(h)
        return self.head(inputs, h)


def random_model_extended(seed):
    """The extended generator's model of `seed`: every layer type of
    `random_model` and those of `EXTENDED_LAYER_TYPES`, 3-D inputs too."""
    return _Extended(seed).model()
