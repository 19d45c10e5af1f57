"""Point-E (Nichol et al., "Point-E: A System for Generating 3D Point Clouds from Complex Prompts", 2022) in plain
torch: the point-diffusion transformers (text-vector and image-grid base models, the 1,024 → 4,096 upsampler), the
Gaussian diffusion facts and the Karras sampler, the SDF regression model and its marching-cubes mesh, the public
checkpoints and the CLIP conditioning. Method code only: nothing here imports ``pipelines/`` or ``serving/``.
"""
