"""Latent-NeRF (Metzer et al., CVPR 2023): the field (:mod:`.field`), volume rendering (:mod:`.volume`) and the
Sketch-Shape loss (:mod:`.sketch`). The pipeline that drives them is :mod:`backend.pipelines.latent_nerf`."""
