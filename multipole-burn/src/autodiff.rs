//! The kernels under Burn's autodiff: the forward saves its inputs and outputs (O(n) memory),
//! and the backward node runs multipole's GPU backward for dQ, dK, dV and the weights.

use burn::backend::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::Cube;

use crate::kernels::{FmaKernelOps, PlanHandle};

#[derive(Debug)]
struct FmaBackward;

/// What the backward needs: the forward's inputs and outputs, and the plan.
#[derive(Clone, Debug)]
struct Saved {
    inputs: [FloatTensor<Cube>; 4],
    o: FloatTensor<Cube>,
    lse: FloatTensor<Cube>,
    plan: PlanHandle,
}

impl Backward<Cube, 4> for FmaBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_o = grads.consume::<Cube>(&ops.node);
        let Saved {
            inputs: [q, k, v, w],
            o,
            lse,
            plan,
        } = ops.state;
        let (dq, dk, dv, dw) = Cube::fma_kernels_backward(q, k, v, w, o, lse, d_o, plan);
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv, dw]) {
            if let Some(node) = parent {
                grads.register::<Cube>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> FmaKernelOps for Autodiff<Cube, C> {
    fn fma_kernels(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        plan: PlanHandle,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [q.node(), k.node(), v.node(), w.node()];
        let inputs = [q, k, v, w].map(|t| t.into_primitive());
        match FmaBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let [q, k, v, w] = inputs.clone();
                let (o, lse) = Cube::fma_kernels(q, k, v, w, plan.clone());
                let saved = Saved {
                    inputs,
                    o: o.clone(),
                    lse: lse.clone(),
                    plan,
                };
                (prep.finish(saved, o), FloatTensor::<Self>::new(lse))
            }
            OpsKind::UnTracked(prep) => {
                let [q, k, v, w] = inputs;
                let (o, lse) = Cube::fma_kernels(q, k, v, w, plan);
                (prep.finish(o), FloatTensor::<Self>::new(lse))
            }
        }
    }

    /// The backward as a value, not a graph: multipole has no second derivatives, so its
    /// results are constants here.
    fn fma_kernels_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        w: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        plan: PlanHandle,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let [q, k, v, w, o, lse, d_o] = [q, k, v, w, o, lse, d_o].map(|t| t.into_primitive());
        let (dq, dk, dv, dw) = Cube::fma_kernels_backward(q, k, v, w, o, lse, d_o, plan);
        (
            FloatTensor::<Self>::new(dq),
            FloatTensor::<Self>::new(dk),
            FloatTensor::<Self>::new(dv),
            FloatTensor::<Self>::new(dw),
        )
    }
}
