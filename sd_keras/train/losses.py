"""The loss graph of a stage: VAE reconstruction + KL + latent moment + edge terms, diffusion MSE (epsilon or v,
optionally Min-SNR-gamma weighted) with caption dropout."""

import numpy as np


def make_training_graph(parts, stage, model_config, trains_vae, trains_diffusion, empty_tokens):
    """A Keras layer whose call returns the stage's loss terms; its variables are the components' variables."""
    import keras
    from keras import ops

    from sd_keras.models.layers import timestep_embedding
    from sd_keras.schedulers import NoiseSchedule

    alphas_cumprod = NoiseSchedule().alphas_cumprod.astype(np.float32)
    scaling = float(model_config.vae.scaling_factor)
    timestep_dim = model_config.unet.timestep_dim
    v_prediction = model_config.prediction_type == "v_prediction"

    class TrainingGraph(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="training_graph")
            self.encoder_moments = parts.encoder_moments
            self.decoder = parts.decoder
            self.text_encoder = parts.text_encoder
            self.diffusion_model = parts.diffusion_model
            self.built = True

        def _moments(self, images):
            moments = ops.cast(self.encoder_moments(images), "float32")
            mean, logvar = ops.split(moments, 2, axis=-1)
            return mean, ops.clip(logvar, -30.0, 20.0)

        def vae_loss(self, images, posterior_noise):
            mean, logvar = self._moments(images)
            latent = (mean + ops.exp(0.5 * logvar) * posterior_noise) * scaling
            reconstruction = ops.cast(self.decoder(latent), "float32")
            error = reconstruction - images
            recon = ops.mean(ops.abs(error)) if stage.recon_loss == "l1" else ops.mean(ops.square(error))
            kl = ops.mean(0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar))
            moment = ops.square(ops.mean(ops.square(mean * scaling)) - 1.0)
            terms = {"recon": recon, "kl": kl, "latent_moment": moment}
            loss = recon + stage.kl_weight * kl + stage.latent_moment_weight * moment
            if stage.edge_weight:
                edge = (ops.mean(ops.abs(error[:, 1:] - error[:, :-1])) +
                        ops.mean(ops.abs(error[:, :, 1:] - error[:, :, :-1])))
                terms["edge"] = edge
                loss = loss + stage.edge_weight * edge
            return loss, terms, mean

        def diffusion_loss(self, latents, tokens, noise, timesteps, drop):
            tokens = ops.where(ops.expand_dims(drop, -1), ops.convert_to_tensor(empty_tokens), tokens)
            positions = ops.broadcast_to(ops.arange(tokens.shape[1], dtype="int32")[None], ops.shape(tokens))
            context = self.text_encoder({"tokens": tokens, "positions": positions})
            signal = ops.take(ops.convert_to_tensor(alphas_cumprod), timesteps)[:, None, None, None]
            noisy = ops.sqrt(signal) * latents + ops.sqrt(1.0 - signal) * noise
            prediction = self.diffusion_model({"latent": noisy,
                                               "timestep_embedding": timestep_embedding(timesteps, timestep_dim),
                                               "context": context})
            target = ops.sqrt(signal) * noise - ops.sqrt(1.0 - signal) * latents if v_prediction else noise
            per_sample = ops.mean(ops.square(ops.cast(prediction, "float32") - target), axis=(1, 2, 3))
            if stage.snr_gamma:
                snr = signal[:, 0, 0, 0] / (1.0 - signal[:, 0, 0, 0])
                weight = ops.minimum(snr, stage.snr_gamma) / (snr + 1.0 if v_prediction else snr)
                return ops.mean(per_sample * weight), {"mse": ops.mean(per_sample)}
            loss = ops.mean(per_sample)
            return loss, {"mse": loss}

        def call(self, inputs):
            terms, loss = {}, 0.0
            latents = inputs.get("latents")
            if trains_vae:
                images = ops.cast(inputs["images"], "float32") / 127.5 - 1.0
                vae_loss, vae_terms, mean = self.vae_loss(images, inputs["posterior_noise"])
                loss = loss + vae_loss
                terms.update(vae_terms)
                if trains_diffusion:
                    latents = ops.stop_gradient(mean * scaling)
            if trains_diffusion:
                diffusion, diffusion_terms = self.diffusion_loss(latents, inputs["tokens"], inputs["noise"],
                                                                 inputs["timesteps"], inputs["drop"])
                loss = loss + diffusion
                terms.update(diffusion_terms)
            terms["loss"] = loss
            return terms

    return TrainingGraph()
