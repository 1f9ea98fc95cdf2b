"""Flax models on one attention/encoder core.

Vocabulary (config keys): `model_type` is ViViT's layout ('spacetime',
'factorized_encoder', 'factorized_self_attention_block',
'factorized_dot_product_attention' = models 1-4); `attention_type` the TimeSformer /
X-ViT layout; `kind` the attention itself ('dense' or 'knn', `AttentionSpec.kind`),
chosen per attention, independent of the layout. `registry` lists the families
(`vivit`, `timesformer`, `xvit`, `student`, `cast`); `attention` is the interface
every block uses.
"""
