//! Training the ViT through Burn: its autodiff and AdamW, the recipe of the CPU trainer
//! (`multipole::model::train`): the same initial weights, batches, shifts and learning-rate
//! schedule for a seed, weight decay on the linear layers' matrices only. On the device
//! `multipole_burn::init_wgpu` opens, attention runs FMA's kernels and GPU backward; on any
//! other Burn backend, the Burn-ops path.

use burn::module::ParamGroup;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use multipole::model::mnist::{Digits, SIDE, place_centred};
use multipole::model::rng::Rng;
use multipole::model::train::{EpochLog, Progress, TrainOptions, shifted_batch};
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
    let bad = |m: String| Error::Fma(multipole::FmaError::Model(m));
    if train.is_empty() || opts.batch == 0 || opts.epochs == 0 {
        return Err(bad(
            "training needs digits, a batch of at least 1 and at least one epoch".into(),
        ));
    }
    if config.image != SIDE {
        return Err(bad(format!(
            "MNIST digits are {SIDE} x {SIDE}; the model expects {}",
            config.image
        )));
    }
    let mut model = Vit::from_weights(&VitWeights::init(config, opts.seed)?, device)?;
    let adam = |decay: f64| {
        AdamWConfig::new()
            .with_epsilon(EPSILON)
            .with_weight_decay(decay as f32)
    };
    let mut optim = adam(0.0).init().with_group(
        ParamGroup::from_ids(model.decayed_params()),
        adam(opts.weight_decay).build(),
        None,
    );
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = Rng::new(opts.seed.wrapping_add(1));
    let steps_per_epoch = train.len().div_ceil(opts.batch);
    let total = steps_per_epoch
        .checked_mul(opts.epochs)
        .ok_or_else(|| bad(format!("{} epochs is too many", opts.epochs)))?;
    let mut logs = Vec::new();
    for epoch in 1..=opts.epochs {
        let started = std::time::Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for (step, batch) in order.chunks(opts.batch).enumerate() {
            let (images, labels) = shifted_batch(config, opts.shift, train, batch, &mut rng)?;
            let (images, targets) = tensors(config, images, &labels, device);
            let logits = model.forward(images)?;
            let loss = loss_fn.forward(logits.clone(), targets);
            let (logits, loss_value) = (logits.detach(), loss.clone().detach());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = opts.learning_rate((epoch - 1) * steps_per_epoch + step, total);
            model = optim.step(lr, model, grads);
            // Read back after the step is queued, so that the device never waits on the host.
            let right = count_right(&logits, &labels)?;
            let loss_value: f32 = loss_value.into_scalar();
            loss_sum += f64::from(loss_value) * batch.len() as f64;
            correct += right;
            seen += batch.len();
            progress(Progress::Step(
                epoch,
                step + 1,
                steps_per_epoch,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
            ));
        }
        let (test_loss, test_accuracy) = evaluate(&model, test, opts.batch)?;
        logs.push(EpochLog {
            epoch,
            train_loss: loss_sum / seen as f64,
            train_accuracy: correct as f64 / seen as f64,
            test_loss,
            test_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        });
        progress(Progress::Epoch(&logs[logs.len() - 1]));
    }
    Ok((model, logs))
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
    let values = logits
        .clone()
        .detach()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::BadTensor {
            what: "logits".into(),
            expected: "f32 values".into(),
            got: format!("{e:?}"),
        })?;
    Ok(values
        .chunks_exact(classes)
        .take(rows)
        .zip(labels)
        .filter(|(row, y)| multipole::model::train::argmax(row) == usize::from(**y))
        .count())
}
