//! The running softmax state of docs/fma.md §6-7: (max, sum, weighted-value accumulator).

/// A partial softmax over some keys of one query.
#[derive(Clone, Debug)]
pub struct Triple {
    pub max: f64,
    pub sum: f64,
    pub acc: Vec<f64>,
}

impl Triple {
    pub fn empty(d: usize) -> Self {
        Triple {
            max: f64::NEG_INFINITY,
            sum: 0.0,
            acc: vec![0.0; d],
        }
    }

    /// Adds one key with score z and value v.
    pub fn add(&mut self, z: f64, v: impl IntoIterator<Item = f64>) {
        let max = self.max.max(z);
        let (old, new) = (scale(self.max, max), (z - max).exp());
        self.sum = self.sum * old + new;
        for (a, x) in self.acc.iter_mut().zip(v) {
            *a = *a * old + new * x;
        }
        self.max = max;
    }

    /// Log-sum-exp merge of two partial triples; associative and commutative.
    pub fn merge(&self, other: &Triple) -> Triple {
        let max = self.max.max(other.max);
        let (a, b) = (scale(self.max, max), scale(other.max, max));
        Triple {
            max,
            sum: self.sum * a + other.sum * b,
            acc: self
                .acc
                .iter()
                .zip(&other.acc)
                .map(|(x, y)| x * a + y * b)
                .collect(),
        }
    }

    /// Normalised output and log-sum-exp.
    pub fn finish(&self) -> (Vec<f64>, f64) {
        if self.sum == 0.0 {
            return (vec![0.0; self.acc.len()], f64::NEG_INFINITY);
        }
        (
            self.acc.iter().map(|a| a / self.sum).collect(),
            self.max + self.sum.ln(),
        )
    }
}

/// exp(m - max), with exp(-inf - -inf) taken as 0 (an empty triple weighs nothing).
fn scale(m: f64, max: f64) -> f64 {
    if m == f64::NEG_INFINITY {
        0.0
    } else {
        (m - max).exp()
    }
}
