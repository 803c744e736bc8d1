//! Training the segmentation model through Burn, and scoring it on held-out canvases.
//!
//! Training canvases are drawn on the fly from the training split: batch `s` holds canvases
//! `s * batch ..` of the seed, so a run needs no data on disk and a seed gives the same batches
//! on every machine. The loss is the per-pixel cross-entropy over the 11 classes; AdamW with
//! linear warm-up and cosine decay, weight decay on the linear layers' matrices only (the
//! classifier's recipe).

use std::time::Instant;

use burn::module::ParamGroup;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use multipole::FmaError;
use multipole::model::mnist::Digits;
use multipole::model::train::TrainOptions;

use crate::canvas::{CLASSES, Canvas, CanvasConfig, canvas};
use crate::segment::{SegConfig, SegVit, predict};
use crate::{Error, Result};

/// Seed of the held-out canvases the scores are reported on (`train-segment`, the accuracy
/// test); training canvases use `SegTrainOptions::seed`.
pub const EVAL_SEED: u64 = 2026;

/// How to train.
#[derive(Clone, Debug, PartialEq)]
pub struct SegTrainOptions {
    pub steps: usize,
    /// Canvases per step.
    pub batch: usize,
    /// Peak learning rate, reached after `warmup` steps, then cosine decay to zero.
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    /// Seeds the canvases and Burn's initialisation of the weights.
    pub seed: u64,
    /// The training canvases.
    pub canvas: CanvasConfig,
}

impl Default for SegTrainOptions {
    fn default() -> Self {
        SegTrainOptions {
            steps: 2000,
            batch: 8,
            lr: 2e-3,
            warmup: 100,
            weight_decay: 0.05,
            seed: 1,
            canvas: CanvasConfig {
                // Up to four digits of 20-36 pixels: about twice the digits a step of
                // `CanvasConfig::new(64)` holds, for the same pixels.
                digits: (2, 4),
                digit_side: (20, 36),
                ..CanvasConfig::new(64)
            },
        }
    }
}

/// One training step's figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SegStep {
    pub step: usize,
    pub steps: usize,
    /// Mean cross-entropy over the batch's pixels.
    pub loss: f64,
    pub lr: f64,
    /// Wall time of the step, the read-back of its loss included.
    pub seconds: f64,
}

/// Trains a fresh model of `config` (Burn's initialisation, seeded) on canvases of `digits` on
/// `device`, which must carry autodiff (`device.autodiff()`). `progress` sees each step's
/// figures and the model after it.
pub fn train(
    config: &SegConfig,
    opts: &SegTrainOptions,
    digits: &Digits,
    device: &Device,
    progress: &mut dyn FnMut(SegStep, &SegVit),
) -> Result<SegVit> {
    // Burn's initialisation draws from the device's generator: seeded, a run repeats.
    device.seed(opts.seed);
    let model = SegVit::new(config, device)?;
    train_model(model, opts, digits, progress)
}

/// Trains `model` (on a device with autodiff; e.g. from `SegVit::from_classifier`) as
/// `train` does.
pub fn train_model(
    mut model: SegVit,
    opts: &SegTrainOptions,
    digits: &Digits,
    progress: &mut dyn FnMut(SegStep, &SegVit),
) -> Result<SegVit> {
    let device = &model.device();
    let config = *model.config();
    if opts.steps == 0 || opts.batch == 0 || !(opts.lr.is_finite() && opts.lr > 0.0) {
        return Err(Error::Fma(FmaError::Model(format!(
            "training needs at least one step and one canvas a step and a positive learning \
             rate, got {} steps of {} at {}",
            opts.steps, opts.batch, opts.lr
        ))));
    }
    let side = opts.canvas.side;
    if !side.is_multiple_of(config.patch) {
        return Err(Error::Fma(FmaError::Model(format!(
            "a training canvas side ({side}) must be a multiple of the patch ({})",
            config.patch
        ))));
    }
    let adam = |decay: f64| AdamWConfig::new().with_weight_decay(decay as f32);
    let mut optim = adam(0.0).init().with_group(
        ParamGroup::from_ids(model.decayed_params()),
        adam(opts.weight_decay).build(),
        None,
    );
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let schedule = TrainOptions {
        lr: opts.lr,
        warmup: opts.warmup,
        ..TrainOptions::default()
    };
    for step in 0..opts.steps {
        let started = Instant::now();
        let first = (step * opts.batch) as u64;
        let pages = (first..first + opts.batch as u64)
            .map(|i| canvas(digits, &opts.canvas, opts.seed, i))
            .collect::<Result<Vec<_>>>()?;
        let (images, labels) = tensors(&pages, device);
        let logits = model.forward(images)?;
        let pixels = opts.batch * side * side;
        let loss = loss_fn.forward(logits.reshape([pixels, CLASSES]), labels);
        let value = loss.clone().detach();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = schedule.learning_rate(step, opts.steps);
        model = optim.step(lr, model, grads);
        let loss = f64::from(value.into_scalar::<f32>());
        if !loss.is_finite() {
            return Err(Error::Fma(FmaError::Model(format!(
                "the loss diverged at step {step} (learning rate {lr})"
            ))));
        }
        let step = SegStep {
            step,
            steps: opts.steps,
            loss,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress(step, &model);
    }
    Ok(model)
}

/// Images `[batch, side, side]` and the pixels' classes, flattened, on `device`.
fn tensors(pages: &[Canvas], device: &Device) -> (Tensor<3>, Tensor<1, Int>) {
    let side = pages.first().map_or(0, |p| p.side);
    let pixels: Vec<f32> = pages
        .iter()
        .flat_map(|p| p.pixels.iter().copied())
        .collect();
    let labels: Vec<i64> = pages
        .iter()
        .flat_map(|p| p.labels.iter().map(|&l| i64::from(l)))
        .collect();
    let count = labels.len();
    (
        Tensor::from_data(TensorData::new(pixels, [pages.len(), side, side]), device),
        Tensor::from_data(TensorData::new(labels, [count]), device),
    )
}

/// Scores over a set of canvases.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SegScores {
    /// Pixels predicted and labelled class c (both), per class.
    pub intersection: [u64; CLASSES],
    /// Pixels predicted or labelled class c (either), per class.
    pub union: [u64; CLASSES],
    /// Digits with at least one ink pixel, and those whose ink's majority class is theirs.
    pub digits: usize,
    pub digits_right: usize,
    pub canvases: usize,
}

impl SegScores {
    /// Adds one canvas and its predicted labels.
    pub fn add(&mut self, page: &Canvas, predicted: &[u8]) {
        for (&truth, &guess) in page.labels.iter().zip(predicted) {
            let (t, g) = (usize::from(truth), usize::from(guess));
            if t >= CLASSES || g >= CLASSES {
                continue;
            }
            self.union[t] += 1;
            if t == g {
                self.intersection[t] += 1;
            } else {
                self.union[g] += 1;
            }
        }
        let mut votes = vec![[0u32; CLASSES]; page.digits.len()];
        for (owner, &guess) in page.owner.iter().zip(predicted) {
            if let Some(k) = owner {
                if let Some(v) = votes.get_mut(usize::from(*k)) {
                    if usize::from(guess) < CLASSES {
                        v[usize::from(guess)] += 1;
                    }
                }
            }
        }
        for (placed, v) in page.digits.iter().zip(&votes) {
            if v.iter().all(|&n| n == 0) {
                continue;
            }
            self.digits += 1;
            // The first class with the most votes: ties go to the smaller label.
            let best = (0..CLASSES).fold(0, |b, c| if v[c] > v[b] { c } else { b });
            if best == usize::from(placed.class) {
                self.digits_right += 1;
            }
        }
        self.canvases += 1;
    }

    /// Intersection over union of class `c`, if any pixel was labelled or predicted `c`.
    pub fn iou(&self, c: usize) -> Option<f64> {
        (self.union[c] > 0).then(|| self.intersection[c] as f64 / self.union[c] as f64)
    }

    /// The mean of `iou` over the classes present.
    pub fn mean_iou(&self) -> f64 {
        let present: Vec<f64> = (0..CLASSES).filter_map(|c| self.iou(c)).collect();
        if present.is_empty() {
            0.0
        } else {
            present.iter().sum::<f64>() / present.len() as f64
        }
    }

    /// Digits whose ink is mostly predicted as their class.
    pub fn digit_accuracy(&self) -> f64 {
        if self.digits == 0 {
            0.0
        } else {
            self.digits_right as f64 / self.digits as f64
        }
    }
}

/// Scores `model` on canvases `0..count` of `seed` drawn from `digits` (the held-out split),
/// `batch` at a time.
pub fn score(
    model: &SegVit,
    digits: &Digits,
    config: &CanvasConfig,
    seed: u64,
    count: usize,
    batch: usize,
) -> Result<SegScores> {
    let device = model.device();
    let mut scores = SegScores::default();
    let indices: Vec<u64> = (0..count as u64).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let pages = chunk
            .iter()
            .map(|&i| canvas(digits, config, seed, i))
            .collect::<Result<Vec<_>>>()?;
        let (images, _) = tensors(&pages, &device);
        let predicted = predict(model, images)?;
        let per = config.side * config.side;
        for (page, labels) in pages.iter().zip(predicted.chunks_exact(per)) {
            scores.add(page, labels);
        }
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canvas::{BACKGROUND, Placed};

    /// A 2 x 2 canvas: digit 0 (class 3) inked the top row, the bottom row is background.
    fn page() -> Canvas {
        Canvas {
            side: 2,
            pixels: vec![1.0, 1.0, 0.0, 0.0],
            labels: vec![3, 3, BACKGROUND, BACKGROUND],
            owner: vec![Some(0), Some(0), None, None],
            digits: vec![Placed {
                class: 3,
                y: 0,
                x: 0,
                side: 1,
                source: 0,
            }],
        }
    }

    #[test]
    fn a_perfect_prediction_scores_one() {
        let mut s = SegScores::default();
        s.add(&page(), &[3, 3, 10, 10]);
        assert_eq!(s.mean_iou(), 1.0);
        assert_eq!(s.digit_accuracy(), 1.0);
        // Only the classes present count towards the mean.
        assert_eq!(s.iou(3), Some(1.0));
        assert_eq!(s.iou(4), None);
    }

    #[test]
    fn iou_and_majority_by_hand() {
        let mut s = SegScores::default();
        // One ink pixel right, one called a 5; one background pixel called a 3.
        s.add(&page(), &[3, 5, 3, 10]);
        // Class 3: 1 pixel both, 3 pixels either (two labelled, one more predicted).
        assert_eq!(s.iou(3), Some(1.0 / 3.0));
        // Class 5: predicted once, never right. Background: 1 of 2.
        assert_eq!(s.iou(5), Some(0.0));
        assert_eq!(s.iou(10), Some(0.5));
        assert!((s.mean_iou() - (1.0 / 3.0 + 0.0 + 0.5) / 3.0).abs() < 1e-12);
        // A 1-1 tie between 3 and 5 goes to the smaller label: right.
        assert_eq!((s.digits, s.digits_right), (1, 1));
        s.add(&page(), &[5, 5, 10, 10]);
        assert_eq!((s.digits, s.digits_right), (2, 1));
        assert_eq!(s.canvases, 2);
    }
}
