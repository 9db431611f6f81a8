"""Observations on a Dask cluster: leaf families reduced per partition, the latent system solved on the client.

A model is split in two (docs/larger-than-memory.md):

* the **latent part**, declared once on the client as an ordinary
  :class:`~gdag.Model`: plates (sized by the data's global group levels,
  :func:`levels`), the random effects, the parameters;
* the **rows**: the observed leaf families (ratings, scores, installs),
  declared per partition by a function ``rows(m, part)`` that receives a copy
  of the latent model and one partition (a pandas DataFrame) and declares the
  partition's rows in gdag's own language, exactly as in memory::

      def rows(m, part):
          obs = m.plate("obs", len(part))
          m.normal("y", m.params["mu"] + m.nodes["u"][part["g"]], m.params["sigma"], plate=obs)

  The data of each family declared there is the partition's column of the
  same name (or what ``rows`` returns: ``{name: values}``).

Each partition is reduced where it lives to additive sums over its rows
(:class:`RowSums`: ``Z^T W Z`` over the latent variables, ``Z^T W r``,
``r^T W r``, ``sum log d`` and the count, issue 11's statistics at one
theta); the partial sums are added by a fixed fan-in tree of
``dask.delayed`` additions over the partitions in order (:func:`tree_sum`),
so a given partitioning gives the same bits whichever worker finishes first,
and only the sums reach the client, which factors the latent system.  Rows
with a missing response are left out (an unobserved leaf entry does not
change the posterior of the rest).  Whatever ``distributed.Client`` is
active runs the tasks; without one, Dask's default scheduler does.  gdag has
no scheduling, transport or spilling code of its own.

What the distributed path cannot do is refused before the reduction is
scheduled, naming the family (:func:`check_rows`): a family declared per
partition that another one depends on (an observed non-leaf family), a
parameter multiplying an observed family's term, a family that reads a node
through more than one entry per row, a deterministic (``sd=0``) row, new
plates' nodes that are not observed.
"""

from .fit import DaskFit, DaskModel, FitSums, fit
from .posterior import DaskPosterior, SummedConditioning, fitted, posterior, reduce_rows
from .rows import FAN_IN, LANES, RowSums, check_rows, is_dask, levels, levels_of, reduce_partitions, row_sums, tree_sum

__all__ = ["is_dask", "levels", "levels_of", "check_rows", "RowSums", "row_sums", "tree_sum", "reduce_partitions",
           "reduce_rows", "posterior", "fit", "fitted", "DaskPosterior", "SummedConditioning", "DaskModel", "DaskFit",
           "FitSums", "FAN_IN", "LANES"]
