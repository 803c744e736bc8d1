//! Training the ViT through Burn: its autodiff and AdamW, the recipe of the CPU trainer
//! (`multipole::model::train`): the same initial weights, batches, shifts and learning-rate
//! schedule for a seed, weight decay on the linear layers' matrices only. On the device
//! `multipole_burn::init_wgpu` opens, attention runs FMA's kernels and GPU backward; on any
//! other Burn backend, the Burn-ops path.

use burn::module::ParamGroup;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use multipole::model::mnist::{Digits, place_centred};
use multipole::model::train::{EpochLog, Progress, Stepper, TrainOptions, check, run_epochs};
use multipole::model::{VitConfig, VitWeights};

use crate::{Error, Result, Vit};

/// AdamW's ε; Burn's default (1e-5) is not the CPU trainer's.
const EPSILON: f32 = 1e-8;

/// Trains a fresh model of `config` on `train` on `device` (one with autodiff:
/// `device.autodiff()`), evaluating on `test` after every epoch.
pub fn train(
    config: &VitConfig,
    opts: &TrainOptions,
    train: &Digits,
    test: &Digits,
    device: &Device,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(Vit, Vec<EpochLog>)> {
    check(config, opts, train)?;
    let model = Vit::from_weights(&VitWeights::init(config, opts.seed)?, device)?;
    let adam = |decay: f64| {
        AdamWConfig::new()
            .with_epsilon(EPSILON)
            .with_weight_decay(decay as f32)
    };
    let optim = adam(0.0).init().with_group(
        ParamGroup::from_ids(model.decayed_params()),
        adam(opts.weight_decay).build(),
        None,
    );
    let mut burn = BurnStepper {
        model: Some(model),
        optim,
        loss: CrossEntropyLossConfig::new().init(device),
        device: device.clone(),
        test,
        batch: opts.batch,
    };
    let logs = run_epochs(config, opts, train, &mut burn, progress)?;
    let model = burn.model.expect("every step puts the model back");
    Ok((model, logs))
}

/// The Burn trainer's side of `run_epochs`.
struct BurnStepper<'a> {
    /// Taken by each optimiser step and put back (Burn's steps consume the module).
    model: Option<Vit>,
    optim: ModuleOptimizer,
    loss: CrossEntropyLoss,
    device: Device,
    test: &'a Digits,
    batch: usize,
}

impl Stepper for BurnStepper<'_> {
    type Error = Error;

    fn step(&mut self, images: Vec<f32>, labels: &[u8], lr: f64) -> Result<(f64, usize)> {
        let model = self.model.take().expect("every step puts the model back");
        let (images, targets) = tensors(model.config(), images, labels, &self.device);
        let logits = model.forward(images)?;
        let loss = self.loss.forward(logits.clone(), targets);
        let (logits, loss_value) = (logits.detach(), loss.clone().detach());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(lr, model, grads));
        // Read back after the step is queued, so that the device never waits on the host.
        let right = count_right(&logits, labels)?;
        Ok((f64::from(loss_value.into_scalar::<f32>()), right))
    }

    fn evaluate(&mut self) -> Result<(f64, f64)> {
        let model = self.model.as_ref().expect("every step puts the model back");
        evaluate(model, self.test, self.batch)
    }
}

/// Mean cross-entropy and accuracy of `model` on `digits`, each centred, in batches of `batch`.
pub fn evaluate(model: &Vit, digits: &Digits, batch: usize) -> Result<(f64, f64)> {
    if digits.is_empty() {
        return Ok((0.0, 0.0));
    }
    let config = model.config();
    let device = model.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let (mut loss_sum, mut right) = (0.0, 0usize);
    let indices: Vec<usize> = (0..digits.len()).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let mut images = Vec::with_capacity(chunk.len() * config.canvas * config.canvas);
        for &i in chunk {
            place_centred(digits.image(i), config, &mut images)?;
        }
        let labels: Vec<u8> = chunk.iter().map(|&i| digits.labels[i]).collect();
        let (images, targets) = tensors(config, images, &labels, &device);
        // Nothing here is differentiated: the graph is dropped with the tensors.
        let logits = model.forward(images)?.detach();
        right += count_right(&logits, &labels)?;
        let loss: f32 = loss_fn.forward(logits, targets).into_scalar();
        loss_sum += f64::from(loss) * chunk.len() as f64;
    }
    let n = digits.len() as f64;
    Ok((loss_sum / n, right as f64 / n))
}

/// Images `[batch, canvas²]` and class indices `[batch]` on `device`.
fn tensors(
    config: &VitConfig,
    images: Vec<f32>,
    labels: &[u8],
    device: &Device,
) -> (Tensor<2>, Tensor<1, Int>) {
    let shape = [labels.len(), config.canvas * config.canvas];
    let targets: Vec<i64> = labels.iter().map(|&y| i64::from(y)).collect();
    (
        Tensor::from_data(TensorData::new(images, shape), device),
        Tensor::from_data(TensorData::new(targets, [labels.len()]), device),
    )
}

/// How many rows of `logits` have their largest value at the label (the first on ties, as
/// the CPU trainer counts).
fn count_right(logits: &Tensor<2>, labels: &[u8]) -> Result<usize> {
    let [rows, classes] = logits.dims();
    let values = crate::model::read_f32(logits.clone().detach(), "logits")?;
    Ok(values
        .chunks_exact(classes)
        .take(rows)
        .zip(labels)
        .filter(|(row, y)| multipole::model::train::argmax(row) == usize::from(**y))
        .count())
}
