//! `--burn wgpu|ndarray` of `train-mnist` and `classify`: which Burn device runs the ViT of
//! `multipole-vit`.

use burn::tensor::{Device, Tensor, TensorData};
use multipole::FmaError;
use multipole::model::VitWeights;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BurnDevice {
    /// Burn's wgpu device (the GPU adapter), shared with FMA's kernels.
    Wgpu,
    /// Burn's ndarray backend on the CPU; attention in Burn tensor ops.
    Ndarray,
}

impl BurnDevice {
    /// The device, with autodiff for training.
    #[allow(deprecated)] // Device::ndarray: Burn 0.22 prefers Flex
    pub fn open(self, autodiff: bool) -> multipole::Result<Device> {
        let device = match self {
            BurnDevice::Wgpu => multipole_burn::init_wgpu().map_err(from_burn)?,
            BurnDevice::Ndarray => Device::ndarray(),
        };
        Ok(if autodiff { device.autodiff() } else { device })
    }

    /// Logits `[images, classes]` of `weights` as a Burn model for `images` (each a canvas).
    pub fn logits(self, weights: &VitWeights, images: &[f32]) -> multipole::Result<Vec<f32>> {
        let device = self.open(false)?;
        let model = multipole_vit::Vit::from_weights(weights, &device).map_err(from_burn)?;
        let px = weights.config.canvas * weights.config.canvas;
        let input = Tensor::<2>::from_data(
            TensorData::new(images.to_vec(), [images.len() / px, px]),
            &device,
        );
        let logits = model.forward(input).map_err(from_burn)?;
        logits
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| FmaError::Model(format!("the logits could not be read back: {e:?}")))
    }
}

/// multipole-vit's errors as the CLI's.
pub fn from_burn(e: multipole_vit::Error) -> FmaError {
    match e {
        multipole_vit::Error::Fma(e) => e,
        other => FmaError::Model(other.to_string()),
    }
}
