"""vaegan_contrastive."""
