"""Model architectures, one module each, registered in group `arch` (`model.arch.name`).

`hf` is any Hugging Face checkpoint (the text models, `model.name_or_path`); `vit` a ViT image
classifier from a `ViTConfig` (or any ViT/CLIP vision checkpoint); `logreg` multinomial logistic
regression on feature vectors; `mf` and `ncf` rating models (matrix factorisation, neural
collaborative filtering) whose user parameters are named ``user*`` so that
``algorithm=fedper 'algorithm.local_keys=[user]'`` keeps them on their client.

Modules import torch and transformers only inside `build` (the coordinator parses the options).
"""
