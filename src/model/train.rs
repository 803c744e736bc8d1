//! Training the ViT on the CPU: AdamW with warm-up and cosine decay, shifted digits as
//! augmentation, batches split into fixed chunks that threads share. The chunks' gradients are
//! summed in chunk order, so a seed gives the same weights whatever the thread count.

use super::config::VitConfig;
use super::cpu::CpuVit;
use super::layers::cross_entropy;
use super::mnist::{Digits, SIDE, centre_offset, place, place_centred};
use super::params::{Params, VitWeights};
use crate::error::{FmaError, Result};
use crate::rng::Rng;

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: usize,
    /// Peak learning rate, reached after `warmup` steps, then cosine decay to zero.
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
    /// Digits are placed at a random offset of up to this many pixels from the centre.
    pub shift: usize,
    /// Worker threads (the result does not depend on it).
    pub threads: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 20,
            batch: 32,
            lr: 2e-3,
            warmup: 200,
            weight_decay: 0.05,
            seed: 1,
            shift: 2,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// One epoch's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub seconds: f64,
}

/// What training reports as it goes.
pub enum Progress<'a> {
    /// A step finished: (epoch, step within the epoch, steps per epoch, running loss, running
    /// accuracy).
    Step(usize, usize, usize, f64, f64),
    Epoch(&'a EpochLog),
}

/// Images per chunk: the unit of work a thread takes.
const CHUNK: usize = 8;

/// Trains a fresh model of `config` on `train`, evaluating on `test` after every epoch.
pub fn train(
    config: &VitConfig,
    opts: &TrainOptions,
    train: &Digits,
    test: &Digits,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(VitWeights, Vec<EpochLog>)> {
    check(config, opts, train)?;
    let weights = VitWeights::init(config, opts.seed)?;
    let mut cpu = CpuStepper {
        model: CpuVit::new(config)?,
        decay: config.params()?.iter().map(|p| p.decay).collect(),
        adam: AdamW::new(&weights.params),
        weights,
        opts,
        test,
    };
    let logs = run_epochs(config, opts, train, &mut cpu, progress)?;
    Ok((cpu.weights, logs))
}

/// The CPU trainer's side of `run_epochs`.
struct CpuStepper<'a> {
    model: CpuVit,
    weights: VitWeights,
    decay: Vec<bool>,
    adam: AdamW,
    opts: &'a TrainOptions,
    test: &'a Digits,
}

impl Stepper for CpuStepper<'_> {
    type Error = FmaError;

    fn step(&mut self, images: Vec<f32>, labels: &[u8], lr: f64) -> Result<(f64, usize)> {
        let params = &mut self.weights.params;
        let (grads, loss, right) =
            batch_gradients(&self.model, params, &images, labels, self.opts.threads)?;
        self.adam
            .step(params, &grads, &self.decay, lr, self.opts.weight_decay);
        Ok((loss, right))
    }

    fn evaluate(&mut self) -> Result<(f64, f64)> {
        evaluate(
            &self.model,
            &self.weights.params,
            self.test,
            self.opts.threads,
        )
    }
}

/// One trainer's side of the loop `run_epochs` drives (the CPU trainer here, the Burn trainer
/// in `multipole-vit`).
pub trait Stepper {
    type Error: From<FmaError>;
    /// One optimiser step on a batch at learning rate `lr`: the batch's mean loss and how many
    /// of its digits the model got right before the step.
    fn step(
        &mut self,
        images: Vec<f32>,
        labels: &[u8],
        lr: f64,
    ) -> std::result::Result<(f64, usize), Self::Error>;
    /// Mean loss and accuracy on the held-out digits.
    fn evaluate(&mut self) -> std::result::Result<(f64, f64), Self::Error>;
}

/// Refuses what training cannot run: no digits, a zero batch or epoch count, or a model that
/// does not take MNIST's digits.
pub fn check(config: &VitConfig, opts: &TrainOptions, train: &Digits) -> Result<()> {
    if train.is_empty() || opts.batch == 0 || opts.epochs == 0 {
        return Err(FmaError::Model(
            "training needs digits, a batch of at least 1 and at least one epoch".into(),
        ));
    }
    if config.image != SIDE {
        return Err(FmaError::Model(format!(
            "MNIST digits are {SIDE} x {SIDE}; the model expects {}",
            config.image
        )));
    }
    Ok(())
}

/// The loop both trainers run: every epoch the digits in a seeded order, shifted at random
/// (`shifted_batch`), one `step` per batch at the schedule's learning rate, then `evaluate`;
/// progress as it goes. A seed gives the same batches to every trainer.
pub fn run_epochs<S: Stepper>(
    config: &VitConfig,
    opts: &TrainOptions,
    train: &Digits,
    stepper: &mut S,
    progress: &mut dyn FnMut(Progress<'_>),
) -> std::result::Result<Vec<EpochLog>, S::Error> {
    let mut rng = Rng::new(opts.seed.wrapping_add(1));
    let steps_per_epoch = train.len().div_ceil(opts.batch.max(1));
    let total = steps_per_epoch
        .checked_mul(opts.epochs)
        .ok_or_else(|| FmaError::Model(format!("{} epochs is too many", opts.epochs)))?;
    let mut logs = Vec::new();
    for epoch in 1..=opts.epochs {
        let started = std::time::Instant::now();
        let mut order: Vec<usize> = (0..train.len()).collect();
        rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for (step, batch) in order.chunks(opts.batch.max(1)).enumerate() {
            let (images, labels) = shifted_batch(config, opts.shift, train, batch, &mut rng)?;
            let lr = opts.learning_rate((epoch - 1) * steps_per_epoch + step, total);
            let (loss, right) = stepper.step(images, &labels, lr)?;
            loss_sum += loss * batch.len() as f64;
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
        let (test_loss, test_accuracy) = stepper.evaluate()?;
        logs.push(EpochLog {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_loss,
            test_accuracy,
            seconds: started.elapsed().as_secs_f64(),
        });
        progress(Progress::Epoch(&logs[logs.len() - 1]));
    }
    Ok(logs)
}

/// The digits `batch` of `digits`, each placed on the canvas at a random offset of up to
/// `shift` pixels from the centre (the augmentation), and their labels.
pub fn shifted_batch(
    config: &VitConfig,
    shift: usize,
    digits: &Digits,
    batch: &[usize],
    rng: &mut Rng,
) -> Result<(Vec<f32>, Vec<u8>)> {
    let canvas = config.canvas;
    let centre = centre_offset(config)?;
    let shift = shift.min(centre);
    let mut images = Vec::with_capacity(batch.len() * canvas * canvas);
    for &i in batch {
        let dy = centre - shift + rng.below(2 * shift + 1);
        let dx = centre - shift + rng.below(2 * shift + 1);
        place(digits.image(i), canvas, dy, dx, &mut images)?;
    }
    Ok((images, batch.iter().map(|&i| digits.labels[i]).collect()))
}

impl TrainOptions {
    /// Learning rate at step `t` of `total`: linear warm-up, then cosine decay to zero.
    pub fn learning_rate(&self, t: usize, total: usize) -> f64 {
        if t < self.warmup {
            return self.lr * (t + 1) as f64 / self.warmup as f64;
        }
        let rest = (total - self.warmup.min(total)).max(1) as f64;
        let x = (t - self.warmup) as f64 / rest;
        0.5 * self.lr * (1.0 + (std::f64::consts::PI * x.min(1.0)).cos())
    }
}

/// Runs `work` on every chunk index over `threads` threads; results in chunk order.
fn per_chunk<R: Send>(
    chunks: usize,
    threads: usize,
    work: &(dyn Fn(usize) -> Result<R> + Sync),
) -> Result<Vec<R>> {
    let threads = threads.clamp(1, chunks.max(1));
    let mut out: Vec<Option<Result<R>>> = (0..chunks).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..chunks)
                        .step_by(threads)
                        .map(|c| (c, work(c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panicking worker is a bug in this crate, not a caller error: pass it on.
            for (c, r) in h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)) {
                out[c] = Some(r);
            }
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(FmaError::Model("internal: a chunk was lost".into()))))
        .collect()
}

/// Mean loss gradient over a batch, the mean loss and the number of right answers.
fn batch_gradients(
    model: &CpuVit,
    params: &Params<f32>,
    images: &[f32],
    labels: &[u8],
    threads: usize,
) -> Result<(Params<f32>, f64, usize)> {
    let px = model.config.canvas * model.config.canvas;
    let classes = model.config.classes;
    let chunks = labels.len().div_ceil(CHUNK);
    let scale = 1.0 / labels.len() as f32;
    let results = per_chunk(chunks, threads, &|c| {
        let lab = &labels[c * CHUNK..((c + 1) * CHUNK).min(labels.len())];
        let img = &images[c * CHUNK * px..(c * CHUNK + lab.len()) * px];
        let (logits, cache) = model.forward(params, img)?;
        let (loss, mut dl) = cross_entropy(&logits, lab, classes);
        // cross_entropy averages over the chunk; the step averages over the batch.
        for g in &mut dl {
            *g = *g * lab.len() as f32 * scale;
        }
        let right = count_right(&logits, lab, classes);
        Ok((
            model.backward(params, &cache, &dl)?,
            loss as f64 * lab.len() as f64,
            right,
        ))
    })?;
    let mut iter = results.into_iter();
    let (mut grads, mut loss, mut right) = iter
        .next()
        .ok_or_else(|| FmaError::Model("empty batch".into()))?;
    for (g, l, r) in iter {
        grads.add(&g);
        loss += l;
        right += r;
    }
    Ok((grads, loss / labels.len() as f64, right))
}

fn count_right(logits: &[f32], labels: &[u8], classes: usize) -> usize {
    logits
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, y)| argmax(row) == **y as usize)
        .count()
}

/// Index of the largest value (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv { (i, v) } else { (bi, bv) }
        })
        .0
}

/// Mean loss and accuracy of centred digits.
pub fn evaluate(
    model: &CpuVit,
    params: &Params<f32>,
    digits: &Digits,
    threads: usize,
) -> Result<(f64, f64)> {
    if digits.is_empty() {
        return Ok((0.0, 0.0));
    }
    let per = 32;
    let chunks = digits.len().div_ceil(per);
    let results = per_chunk(chunks, threads, &|c| {
        let range = c * per..((c + 1) * per).min(digits.len());
        let mut images = Vec::new();
        for i in range.clone() {
            place_centred(digits.image(i), &model.config, &mut images)?;
        }
        let logits = model.logits(params, &images)?;
        let lab = &digits.labels[range];
        let (loss, _) = cross_entropy(&logits, lab, model.config.classes);
        Ok((
            loss as f64 * lab.len() as f64,
            count_right(&logits, lab, model.config.classes),
        ))
    })?;
    let (loss, right) = results
        .into_iter()
        .fold((0.0, 0), |(l, r), (a, b)| (l + a, r + b));
    Ok((
        loss / digits.len() as f64,
        right as f64 / digits.len() as f64,
    ))
}

/// AdamW (decoupled weight decay) with beta = (0.9, 0.999), eps = 1e-8.
struct AdamW {
    m: Params<f32>,
    v: Params<f32>,
    t: i32,
}

impl AdamW {
    fn new(p: &Params<f32>) -> AdamW {
        AdamW {
            m: p.zeros_like(),
            v: p.zeros_like(),
            t: 0,
        }
    }

    fn step(&mut self, p: &mut Params<f32>, g: &Params<f32>, decay: &[bool], lr: f64, wd: f64) {
        const B1: f64 = 0.9;
        const B2: f64 = 0.999;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        for (i, (((pt, gt), mt), vt)) in p
            .tensors
            .iter_mut()
            .zip(&g.tensors)
            .zip(&mut self.m.tensors)
            .zip(&mut self.v.tensors)
            .enumerate()
        {
            let wd = if decay[i] { wd } else { 0.0 };
            for (((x, &gr), m), v) in pt.iter_mut().zip(gt).zip(mt.iter_mut()).zip(vt.iter_mut()) {
                let gr = gr as f64;
                *m = (B1 * *m as f64 + (1.0 - B1) * gr) as f32;
                *v = (B2 * *v as f64 + (1.0 - B2) * gr * gr) as f32;
                let update = (*m as f64 / c1) / ((*v as f64 / c2).sqrt() + 1e-8);
                *x = (*x as f64 - lr * (update + wd * *x as f64)) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few steps on a tiny model and a tiny set lower the loss, and the thread count does not
    /// change the weights.
    #[test]
    fn training_learns_and_is_deterministic() {
        let cfg = VitConfig {
            dim: 8,
            depth: 1,
            heads: 2,
            mlp: 8,
            classes: 2,
            ..VitConfig::fma()
        };
        let mut digits = Digits::default();
        for i in 0..24usize {
            let class = (i % 2) as u8;
            let img: Vec<u8> = (0..SIDE * SIDE)
                .map(|p| {
                    let (y, x) = (p / SIDE, p % SIDE);
                    // Class 0: a vertical bar; class 1: a horizontal bar.
                    let on = if class == 0 {
                        (12..16).contains(&x)
                    } else {
                        (12..16).contains(&y)
                    };
                    if on { 200 + (i as u8 % 50) } else { 0 }
                })
                .collect();
            digits.pixels.extend(img);
            digits.labels.push(class);
        }
        let opts = TrainOptions {
            epochs: 15,
            batch: 12,
            lr: 1e-2,
            warmup: 2,
            threads: 1,
            ..TrainOptions::default()
        };
        let (w1, logs) = train(&cfg, &opts, &digits, &digits, &mut |_| {}).unwrap();
        assert!(logs[14].train_loss < 0.8 * logs[0].train_loss, "{logs:?}");
        assert_eq!(logs[14].test_accuracy, 1.0, "{logs:?}");
        let (w2, _) = train(
            &cfg,
            &TrainOptions { threads: 2, ..opts },
            &digits,
            &digits,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(w1, w2);
    }
}
