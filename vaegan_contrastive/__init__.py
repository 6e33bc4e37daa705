"""DC-VAE (Parmar et al., CVPR 2021): a VAE whose discriminator is both an adversary (hinge loss on samples and
reconstructions) and a contrastive critic (InfoNCE of reconstructions against momentum keys of the real
images), trained data-parallel with the negatives queue filled from every rank.

Modules: `models` (encoder, decoder, dual discriminator), `losses`, `negatives` (momentum keys + queue),
`data`, `train` (the loop, the ablation variants), `evaluate` (FID/IS with LeNet or Inception features,
reconstruction error, linear probe).

    from common.distributed import run_processes
    from vaegan_contrastive.data import DataConfig
    from vaegan_contrastive.models import ModelConfig
    from vaegan_contrastive.train import TrainConfig, load_model, train_worker

    mc = ModelConfig(resolution=32, channels=1, latent_dim=32, enc_ch=16, dec_ch=32, disc_ch=16)
    runs = {"dcvae": TrainConfig.for_variant("dcvae", steps=400, queue_size=1024)}
    out = run_processes(train_worker, 2, args=(mc, runs, DataConfig()))[0]["dcvae"]
    model = load_model(mc, out["state"])  # model.sample(n), model.reconstruct(x), model.encode_mean(x)
"""
