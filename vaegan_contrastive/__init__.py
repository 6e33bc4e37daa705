"""DC-VAE (Parmar et al., CVPR 2021): a VAE whose discriminator is both an adversary (hinge loss on samples and
reconstructions) and a contrastive critic (InfoNCE of reconstructions against momentum keys of the real
images), as in the authors' released code, trained data-parallel with the negatives queue filled from every rank.

Modules: `models` (encoder, decoder, dual discriminator), `losses`, `negatives` (momentum keys + queue),
`data`, `train` (the loop, the ablation variants, InfoNCE accuracy and reconstruction spread while training),
`evaluate` (FID/IS through torch-fidelity with LeNet or Inception features, faithfulness, linear probe),
`study` (the paper's experiments as library calls: configs, training every variant, tables, figures),
`claims` (the paper's claims decided from the measured tables), `bench` (`python -m vaegan_contrastive.bench`).

    from vaegan_contrastive import data
    from vaegan_contrastive.models import ModelConfig
    from vaegan_contrastive.train import TrainConfig, load_model, train

    mc = ModelConfig(resolution=16, channels=1, latent_dim=32, enc_ch=16, dec_ch=32, disc_ch=16,
                     spectral_norm_encoder=False, encoder_pool="flatten")
    cfg = TrainConfig.for_variant("dcvae", steps=500, n_critic=1, lr=1e-3, queue_size=512, key_momentum=0.9)
    out = train(mc, cfg, data.load(data.DataConfig(resolution=16)).train)
    model = load_model(mc, out["state"])  # model.sample(n), model.reconstruct(x), model.encode_mean(x)
"""
