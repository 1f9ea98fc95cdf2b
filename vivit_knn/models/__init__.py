"""Flax model definitions that share one attention/encoder core.

Vocabulary (the config keys keep these names):

* `model_type`: ViViT's layout ('spacetime' = model 1, 'factorized_encoder' =
  model 2, 'factorized_self_attention_block' = model 3,
  'factorized_dot_product_attention' = model 4). `encoder.Encoder` takes the
  layouts that run on one encoder.
* `attention_type`: the TimeSformer / X-ViT layout ('divided_space_time',
  'space_only', 'joint_space_time'; 'space_time_mixing', 'space_only').
* `kind`: the attention itself, chosen per attention (`AttentionSpec.kind`:
  'dense' or 'knn', see `attention.ATTENTION_KINDS`), independent of the layout.

Modules: `family` (what a model family is) and `registry` (the families by
name); `vivit`, `timesformer`, `xvit`, `student`, `cast` (one family each);
`video_transformer` (shared fields, stochastic-depth ramp, remat); `encoder`,
`spacetime_attention`, `mhca`, `experts`, `adapters`, `aligner` (blocks);
`attention` (`AttentionSpec`, the kinds, `MultiHeadAttention`),
`attention_backends` (dense / k-NN evaluation paths and the `impl` choice),
`blocked_attention` (query blocks with a recomputing VJP), `knn_kernel` (the
Pallas kernel), `kth_largest` (exact k-th largest search), `cpu_paths`,
`attention_record` (recording attention weights and k-NN kept masks);
`resnet` (the CNN teacher); `partitioning`.
"""
