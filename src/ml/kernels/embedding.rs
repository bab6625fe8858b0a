//! The word-embedding gradient, gathered from the gradient of the looked-up rows.
//!
//! candle's `index_select` backward builds the `[vocab, hidden]` gradient as a zero tensor plus
//! an `index_add` copy, and its gradient store adds that to another zero tensor: three
//! 47 MB buffers per MiniLM step, each freshly mapped, page-faulted and unmapped. Training
//! instead looks the rows up outside the graph, makes them a leaf, and scatters the leaf's
//! gradient here once.

use candle_core::Tensor;

use super::view;

/// `[vocab, hidden]` with row `ids[i]` += `rows[i]`, rows added in order (reproducible).
pub(crate) fn scatter_rows(
    ids: &[u32],
    rows: &Tensor,
    vocab: usize,
) -> candle_core::Result<Tensor> {
    let rows = rows.contiguous()?;
    let hidden = rows.dims().last().copied().unwrap_or(0);
    if rows.elem_count() != ids.len() * hidden {
        candle_core::bail!(
            "taper embedding gradient: {} ids for {:?}",
            ids.len(),
            rows.dims()
        )
    }
    let rows_view = view(&rows);
    let data = rows_view.slice("embedding gradient")?;
    let mut out = vec![0f32; vocab * hidden];
    for (id, row) in ids.iter().zip(data.chunks_exact(hidden.max(1))) {
        let id = *id as usize;
        let Some(target) = out.get_mut(id * hidden..(id + 1) * hidden) else {
            candle_core::bail!("taper embedding gradient: token id {id} outside {vocab}")
        };
        target.iter_mut().zip(row).for_each(|(t, r)| *t += r);
    }
    Tensor::from_vec(out, (vocab, hidden), rows.device())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn scattered_rows_equal_index_select_gradient() {
        let table = Var::from_vec((0..12).map(|i| i as f32).collect(), (4, 3), &Device::Cpu)
            .expect("table");
        let ids = [2u32, 0, 2, 3];
        let id_tensor = Tensor::new(&ids, &Device::Cpu).expect("ids");
        let upstream = Tensor::from_vec(
            (0..12).map(|i| (i as f32 - 5.0) * 0.5).collect(),
            (4, 3),
            &Device::Cpu,
        )
        .expect("upstream");
        let grads = table
            .as_tensor()
            .index_select(&id_tensor, 0)
            .and_then(|w| (w * &upstream)?.sum_all())
            .and_then(|l| l.backward())
            .expect("backward");
        let expected = grads.get(table.as_tensor()).expect("gradient");
        let ours = scatter_rows(&ids, &upstream, 4).expect("scatter");
        assert_eq!(
            ours.to_vec2::<f32>().expect("ours"),
            expected.to_vec2::<f32>().expect("expected")
        );
        assert!(scatter_rows(&[9], &upstream.narrow(0, 0, 1).expect("row"), 4).is_err());
    }
}
