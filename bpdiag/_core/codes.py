"""The integers that steer the kernels, and the constants of their formulas.

One compiled kernel per dtype serves every activation, loss, optimizer and clipping mode: the
choice is a small integer read at run time, so adding a combination never adds a compile. The
registries in ``bpdiag.choices`` map the names a user writes to these codes.
"""

# activations: φ and φ' in ``_core.elementwise``
SIGMOID, TANH, RELU, LEAKY_RELU, ELU, SELU, GELU, LINEAR = range(8)
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0
SELU_LAMBDA = 1.0507009873554804934193349852946  # Klambauer et al. 2017, as in PyTorch
SELU_ALPHA = 1.6732632423543772848170429916717

# normalization of the hidden layers' pre-activations: ``_core.norm``
NO_NORM, BATCHNORM, LAYERNORM = range(3)
NORM_LAYER_EPS = 1e-5  # torch.nn.BatchNorm1d's and LayerNorm's eps
BN_MOMENTUM = 0.1  # torch.nn.BatchNorm1d's: running ← (1 − 0.1) running + 0.1 batch statistic

# what a forward pass normalizes BatchNorm with: the running statistics (as torch's .eval()) or
# the batch's own (as .train())
EVAL, TRAIN = 0, 1

# losses: ``_core.forward.loss_delta``
BCE, CE, MSE = range(3)

# optimizers: ``_core.update``; momentum and Nesterov are SGD with options
SGD, RMSPROP, ADAM, ADAMW = range(4)

# gradient clipping: ``_core.update.clip``
NO_CLIP, CLIP_VALUE, CLIP_NORM, CLIP_LAYER, CLIP_AGC = range(5)
NORM_EPS = 1e-6  # clip_grad_norm_'s term in the denominator
AGC_EPS = 1e-3  # optax.adaptive_grad_clip's floor on the parameter norm
AGC_DIV_EPS = 1e-6  # optax's floor on the gradient norm

# what ``_core.loop.train_steps`` does (``structs.Setup.task``) and returns as its status
TASK_TRAIN, TASK_GRADS, TASK_EVAL = range(3)
STATUS_OK, STATUS_NONFINITE = 0, 1
