"""What the training kernel writes per record: the slots of its record arrays, in order.

``rec_step[row, S_*]`` holds one value per record, ``rec_layer[row, k, L_*]`` one per record
and layer (k = l − 1). The slot names are the columns of ``History.steps`` and
``History.layers``; ``bpdiag.schema`` declares what each one means and where it is logged.
"""

STEP_SLOTS = (
    "step",
    "loss",
    "accuracy",
    "grad_norm_total",
    "grad_norm_total_clipped",
    "clip_coef",
    "sample_grad_sq_total",
    "noise_scale_total",
    "grad_snr_total",
)
(
    S_STEP,
    S_LOSS,
    S_ACC,
    S_GNORM,
    S_GNORM_CLIPPED,
    S_CLIP_COEF,
    S_SAMPLE_SQ,
    S_NOISE,
    S_SNR,
) = range(len(STEP_SLOTS))

LAYER_SLOTS = (
    "grad_norm_W",
    "grad_norm_b",
    "grad_norm_W_clipped",
    "delta_rms",
    "weight_norm",
    "update_ratio",
    "act_mean",
    "act_std",
    "frac_saturated",
    "frac_dead",
    "nonfinite",
    "grad_norm_affine",
    "delta_rms_normed",
    "sample_grad_sq",
    "noise_scale",
    "grad_snr",
)
(
    L_GRAD_W,
    L_GRAD_B,
    L_GRAD_W_CLIPPED,
    L_DELTA_RMS,
    L_WEIGHT_NORM,
    L_UPDATE_RATIO,
    L_ACT_MEAN,
    L_ACT_STD,
    L_FRAC_SAT,
    L_FRAC_DEAD,
    L_NONFINITE,
    L_GRAD_AFFINE,
    L_DELTA_RMS_NORMED,
    L_SAMPLE_SQ,
    L_NOISE,
    L_SNR,
) = range(len(LAYER_SLOTS))

# Per-layer sums of one step (``stats[k, T_*]``): the gradient ones come from the backward
# pass every step, the activation ones from the forward pass's output on record steps only.
# "sample_sumsq" (Σ_i ‖δ_i‖² (‖a_i‖² + 1), ``stats.sample_sq_sum``) on record steps too.
STATS = ("act_sum", "act_sumsq", "saturated", "dead", "delta_sumsq", "gW_sumsq", "gb_sumsq",
         "gaffine_sumsq", "delta_normed_sumsq", "sample_sumsq")  # fmt: skip
(T_ACT_SUM, T_ACT_SQ, T_SAT, T_DEAD, T_DELTA_SQ, T_GW_SQ, T_GB_SQ, T_GAFF_SQ, T_DELTA_U_SQ,
 T_SAMPLE_SQ) = range(len(STATS))  # fmt: skip
N_STATS = len(STATS)
