"""A reproduction on a machine that does not see the driver's files (`harness reproduce --top K
--executor ray` on a fleet without shared storage): what it reads travels to the node with the
task, its folder travels back with the result, both through run/shipping.py as an entry's
evaluation does.

    driver ── inputs ──> node     the entry, the original run's HELM conf and deployments file
                                  (helm/<slug>/<stage>/run_specs.conf, prod_env/
                                  model_deployments.yaml), a consistent copy of the results
                                  store (the whole field's metrics), the --instances pack
    driver <── folder ── node     RESULTS_DIR/reproduce/<slug>/ as the node wrote it, capped
                                  (shipping.RESULTS_CAP_BYTES: the weights and the copies built
                                  from them are the biggest files and stay behind, listed in
                                  DROPPED_NOTE); the reports are written again on the driver
                                  from the result, the JSON last, as a finished one is marked

    task = ShippedReproduction.pack(entry, options, reproduce)  driver: a picklable task(gpu)
    result, folder = task(gpu)                                   node
    result = receive(entry.name, options, result, folder)        driver: into RESULTS_DIR

The node works in `shipping.node_folder(results id, "reproduce-<slug>")`, the same folder each
time the entry is reproduced from that RESULTS_DIR: a rerun after a kill that lands on the same
node removes what the killed one left in Docker (flow.remove_leftovers goes by that folder). The
folder is removed when the task ends. `options.mounts` name folders of the node (a model cache).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from harness.reproduce.options import ReproduceOptions, Reproduction
from harness.reproduce.report import REPORT, write_reports
from harness.run import shipping
from harness.store import STORE_FILENAME, entry_slug, results_id

# (name in the results store, the entry's folder or zip, options, GPU) -> its reproduction
Reproduce = Callable[[str, Path, ReproduceOptions, int | None], Reproduction]
# Written again on the driver, from the result: they name the folder the reproduction is in.
REPORTS = frozenset(f"{REPORT}.{ext}" for ext in ("md", "html", "json"))


def _inputs(name: str, entry: Path, options: ReproduceOptions, store_copy: Path) -> dict[str, Path]:
    run = f"helm/{entry_slug(name)}/{options.stage}"
    items = {
        f"entry/{entry.name}": entry,
        f"results/{STORE_FILENAME}": store_copy,
        f"results/{run}/run_specs.conf": options.results / run / "run_specs.conf",
        f"results/{run}/prod_env/model_deployments.yaml": (
            options.results / run / "prod_env" / "model_deployments.yaml"
        ),
    }
    if options.instances is not None:
        items[f"instances/{options.instances.name}"] = options.instances
    return items


def _folder(entry: str) -> str:
    return f"reproduce/{entry_slug(entry)}"


@dataclass(frozen=True)
class ShippedReproduction:
    """One entry's reproduction as a task that carries its inputs (see the module docstring)."""

    name: str  # the entry's name in the results store
    entry: str  # the entry's folder or zip file name
    options: ReproduceOptions  # the driver's
    inputs: bytes
    reproduce: Reproduce
    cap_bytes: int = shipping.RESULTS_CAP_BYTES  # of the folder sent back

    @classmethod
    def pack(
        cls, name: str, entry: Path, options: ReproduceOptions, reproduce: Reproduce
    ) -> ShippedReproduction:
        """ConfigError when the inputs are over shipping.INPUTS_CAP_BYTES."""
        with tempfile.TemporaryDirectory(prefix="harness-ship-") as tmp:
            # The store is in WAL mode: its file alone may lack the last writes.
            store_copy = Path(tmp, STORE_FILENAME)
            source_uri = (options.results / STORE_FILENAME).resolve().as_uri()
            with (
                closing(sqlite3.connect(f"{source_uri}?mode=ro", uri=True)) as source,
                closing(sqlite3.connect(store_copy)) as copy,
            ):
                source.backup(copy)
            inputs = shipping.pack_inputs(
                _inputs(name, entry, options, store_copy), f"{name} and its original run"
            )
        return cls(name, entry.name, options, inputs, reproduce)

    def __call__(self, gpu: int | None) -> tuple[Reproduction, bytes]:
        """On the node: unpack, reproduce, pack the reproduction's folder."""
        work = shipping.node_folder(
            results_id(self.options.results), f"reproduce-{entry_slug(self.name)}"
        )
        shutil.rmtree(work, ignore_errors=True)  # a killed task's
        try:
            shipping.receive(
                self.inputs,
                work,
                list(_inputs(self.name, Path(self.entry), self.options, Path(STORE_FILENAME))),
                shipping.INPUTS_CAP_BYTES,
                f"the inputs of {self.name}'s reproduction",
            )
            instances = self.options.instances
            local = replace(
                self.options,
                results=work / "results",
                instances=instances and work / "instances" / instances.name,
            )
            result = self.reproduce(self.name, work / "entry" / self.entry, local, gpu)
            folder = shipping.pack_capped(
                local.results,
                [_folder(self.name)],
                _folder(self.name),
                self.cap_bytes,
                leave_out=REPORTS,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return result, folder


def receive(
    entry: str, options: ReproduceOptions, result: Reproduction, folder: bytes
) -> Reproduction:
    """On the driver: the node's folder replaces RESULTS_DIR/reproduce/<slug>/ (refused whole,
    it is left as it was), then the reports are written there, the JSON last."""
    relative = _folder(entry)
    here = options.results / relative
    incoming = here.with_name(f".{here.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        shipping.receive(
            folder,
            incoming,
            [relative],
            # Twice the cap: files in KEPT and the note travel over it.
            2 * shipping.RESULTS_CAP_BYTES,
            f"the reproduction of {entry}",
        )
        shutil.rmtree(here, ignore_errors=True)
        (incoming / relative).mkdir(parents=True, exist_ok=True)  # sent empty
        (incoming / relative).rename(here)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    result = replace(result, folder=here)
    write_reports(result)
    return result
