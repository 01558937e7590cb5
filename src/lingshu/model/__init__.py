"""Pure-torch model layer: the mask predictor, the masked-diffusion loss and the sampler."""
