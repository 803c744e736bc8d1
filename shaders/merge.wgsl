// The running softmax triple (max, sum, accumulator) of docs/fma.md §6-7, its merge, and the
// weights of four keys at a time (their scores in one vec4).
// Scores are kept relative to the running max, so |scores| up to 1e4 (and beyond) never overflow.

struct Triple {
    max: f32,
    sum: f32,
    acc: array<vec4<f32>, HEAD_VEC>,
}

// An invocation's QUERY_ROWS queries (the Direct kernels block several per invocation so that
// every key element read serves all of them): scaled q rows, triples, tokens (-1: none).
alias Rows = array<array<vec4<f32>, HEAD_VEC>, QUERY_ROWS>;
alias Triples = array<Triple, QUERY_ROWS>;
alias Tokens = array<i32, QUERY_ROWS>;
alias Valid = array<vec4<bool>, QUERY_ROWS>;

fn triple_empty() -> Triple {
    var t: Triple;
    t.max = NEG_BIG;
    t.sum = 0.0;
    for (var c = 0u; c < HEAD_VEC; c++) {
        t.acc[c] = vec4<f32>(0.0);
    }
    return t;
}

// Rescales triple r to a new (larger) max before more keys are added.
fn triple_rescale(t: ptr<function, Triples>, r: u32, new_max: f32) {
    let f = exp((*t)[r].max - new_max);
    (*t)[r].sum *= f;
    for (var c = 0u; c < HEAD_VEC; c++) {
        (*t)[r].acc[c] *= f;
    }
    (*t)[r].max = new_max;
}

// Merges a normalised partial result (output o and log-sum-exp l) into triple r and returns
// the normalised output in its acc and the merged log-sum-exp.
fn triple_merge_normalised(t: ptr<function, Triples>, r: u32, o: ptr<function, array<vec4<f32>, HEAD_VEC>>, l: f32) -> f32 {
    let m = max((*t)[r].max, l);
    let a = exp((*t)[r].max - m);
    let b = exp(l - m);
    let s = (*t)[r].sum * a + b;
    for (var c = 0u; c < HEAD_VEC; c++) {
        (*t)[r].acc[c] = ((*t)[r].acc[c] * a + (*o)[c] * b) / s;
    }
    return m + log(s);
}

// The softmax weights of four keys with scores z for triple r (only those set in `valid`
// count): rescales the triple if one of them raises its max, adds them to its sum and returns
// them (0 for the others), ready for the caller to add w . v to the accumulator.
fn triple_weights(t: ptr<function, Triples>, r: u32, z: vec4<f32>, valid: vec4<bool>) -> vec4<f32> {
    let zv = select(vec4<f32>(NEG_BIG), z, valid);
    let m = max(max(zv.x, zv.y), max(zv.z, zv.w));
    if (m > (*t)[r].max) {
        triple_rescale(t, r, m);
    }
    let w = select(vec4<f32>(0.0), exp(zv - (*t)[r].max), valid);
    (*t)[r].sum += (w.x + w.y) + (w.z + w.w);
    return w;
}
