//! The kernels under Burn's autodiff: the forward saves its inputs and outputs (O(n) memory),
//! and the backward node runs multipole's GPU backward for dQ, dK, dV and the weights.

use burn::backend::Autodiff;
use burn::backend::tensor::FloatTensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;

use crate::kernels::{FmaKernelOps, PlanHandle};

#[derive(Debug)]
struct FmaBackward;

/// What the backward needs: the forward's inputs and outputs, and the plan.
#[derive(Clone, Debug)]
struct Saved {
    inputs: [CubeTensor; 4],
    o: CubeTensor,
    lse: CubeTensor,
    plan: PlanHandle,
}

impl Backward<CubeBackend, 4> for FmaBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_o = grads.consume::<CubeBackend>(&ops.node);
        let Saved {
            inputs: [q, k, v, w],
            o,
            lse,
            plan,
        } = ops.state;
        let all = plan.0.backward(q, k, v, w, o, lse, d_o);
        for (parent, grad) in ops.parents.into_iter().zip(all) {
            if let Some(node) = parent {
                grads.register::<CubeBackend>(node.id, grad);
            }
        }
    }
}

impl<C: CheckpointStrategy> FmaKernelOps for Autodiff<CubeBackend, C> {
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
                let (o, lse) = plan.0.forward(q, k, v, w);
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
                let (o, lse) = plan.0.forward(q, k, v, w);
                (prep.finish(o), FloatTensor::<Self>::new(lse))
            }
        }
    }
}
