"""The slurm launcher's pure parts: sbatch argv, squeue/sinfo parsing, end mapping, config, routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from oaasd.config import NodeConfig, Settings, launch_problems
from oaasd.launchers import launcher_kind
from oaasd.launchers.slurmcmd import (
    JobInfo,
    SlurmError,
    SlurmNode,
    end_of,
    gres_gpus,
    parse_job_id,
    parse_sinfo,
    parse_squeue,
    sbatch_argv,
    time_minutes,
)
from oaasd.models import Resources
from oaasd.ports import Exit, Host, LaunchJob
from oaasd.service.attempts import Run
from oaasd.service.reporter import classify
from oaasd.states import Reason, State


def job(workers: int = 1, res: Resources | None = None, limit: float | None = None, spread: bool = False,
        workdir: str | None = None) -> LaunchJob:
    return LaunchJob(task_id=7, attempt_id=11, argv=["echo", "a b; rm -rf /"], env={}, workdir=workdir,
                     attempt_dir=Path("/s/attempts/7/2"), hosts=[Host("c", "127.0.0.1", workers)], workers=workers,
                     resources=res or Resources(), time_limit_s=limit, spread=spread)


def test_sbatch_argv_is_one_word_per_option_and_the_task_follows_the_script_as_arguments():
    node = SlurmNode("debug", account="ml", qos="high", sbatch_args=("--constraint=avx",))
    argv = sbatch_argv("sbatch", node, job(res=Resources(cpus=1.5, memory_mb=300), limit=61, workdir="/w"),
                       "/s/oaasd-batch.sh", ["/bin/sh", "-c", "X", "oaas-task", "/w", "echo", "a b; rm -rf /"])
    assert argv[:4] == ["sbatch", "--parsable", "--job-name=oaasd-7-2", "--partition=debug"]
    for word in ("--account=ml", "--qos=high", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--mem=300M",
                 "--time=2", "--output=/s/attempts/7/2/stdout.log", "--error=/s/attempts/7/2/stderr.log",
                 "--open-mode=append", "--chdir=/w", "--export=ALL", "--no-requeue"):
        assert word in argv, word
    script = argv.index("/s/oaasd-batch.sh")
    assert argv.index("--constraint=avx") < script, "the admin's arguments come before the script"
    assert argv[script + 1:][-1] == "a b; rm -rf /", "user input stays one argument, never shell text"


def test_a_gang_asks_per_task_and_spread_puts_one_per_node():
    argv = sbatch_argv("sbatch", SlurmNode("p"), job(workers=4, res=Resources(cpus=2, memory_mb=1000, gpus=1),
                                                     spread=True), "s", [])
    assert {"--ntasks=4", "--cpus-per-task=2", "--mem-per-cpu=500M", "--gpus-per-task=1", "--nodes=4",
            "--ntasks-per-node=1"} <= set(argv)
    assert not any(a.startswith("--mem=") or a == "--nodes=1" for a in argv)
    # whole GPUs only on Slurm: a share asks for one device; a type goes in the GRES
    one = sbatch_argv("sbatch", SlurmNode("p"), job(res=Resources(cpus=1, gpus=0.25, gpu_type="a100")), "s", [])
    assert "--gres=gpu:a100:1" in one
    single = sbatch_argv("sbatch", SlurmNode("p"), job(res=Resources(gpus=2)), "s", [])
    assert "--gres=gpu:2" in single and not any(a.startswith("--time") for a in single)
    assert "--chdir=/s/attempts/7/2" in single, "no workdir: the attempt directory"


@pytest.mark.parametrize("limit,minutes", [(0.5, 1), (60, 1), (60.1, 2), (3600, 60)])
def test_slurm_time_limit_is_whole_minutes_rounded_up(limit, minutes):
    assert time_minutes(limit) == minutes


def test_parse_job_id_takes_the_id_before_the_cluster_and_refuses_anything_else():
    assert parse_job_id("123\n") == "123" and parse_job_id("45;cluster-a\n") == "45"
    with pytest.raises(SlurmError):
        parse_job_id("sbatch: error: nope")


def test_parse_squeue_reads_every_job_of_one_answer():
    jobs = parse_squeue("12|PENDING|Priority|\n13|RUNNING|None|n1\n14|COMPLETED|None|n1\n\ngarbage\n")
    assert set(jobs) == {"12", "13", "14"}
    assert jobs["12"].waiting == "SlurmPending: Priority" and jobs["12"].active
    assert jobs["13"].waiting is None and jobs["13"].active and not jobs["14"].active


def test_parse_sinfo_sizes_a_partition_and_refuses_one_that_cannot_run_jobs():
    out = "n1|up|8|16000|gpu:a100:2(S:0)|idle|none\nn2|up|8|16000|(null)|mixed|none\nn1|up|8|16000|gpu:2|idle|none\n"
    info = parse_sinfo("p", out)
    assert (info["cpus"], info["memory_mb"], info["gpus"], info["nodes"]) == (16, 32000, 2, 2)
    with pytest.raises(SlurmError, match="no partition 'p'"):
        parse_sinfo("p", "")
    with pytest.raises(SlurmError, match="partition p is down"):
        parse_sinfo("p", "n1|down|8|16000|(null)|idle|none\n")
    with pytest.raises(SlurmError, match=r"n1 down\* \(Not responding\)"):
        parse_sinfo("p", "n1|up|8|16000|(null)|down*|Not responding\n")
    assert gres_gpus("gpu:tesla:4,gpu:2(S:1),mps:100") == 6


def info(state: str, reason: str = "None") -> JobInfo:
    return JobInfo("9", state, reason, "n1")


@pytest.mark.parametrize("state,recorded,expect", [
    ("COMPLETED", Exit(exit_code=0), Exit(exit_code=0)),
    ("FAILED", Exit(exit_code=3), Exit(exit_code=3)),
    ("TIMEOUT", None, Exit(exit_code=None, state=State.TIMEOUT, reason="Slurm job 9 TIMEOUT")),
    ("OUT_OF_MEMORY", Exit(exit_code=137, signal="SIGKILL"),
     Exit(exit_code=137, signal="SIGKILL", state=State.OUT_OF_MEMORY, reason="Slurm job 9 OUT_OF_MEMORY")),
    ("NODE_FAIL", None, Exit(exit_code=None, lost=True, reason="Slurm job 9 NODE_FAIL")),
    ("PREEMPTED", Exit(exit_code=143), Exit(exit_code=143, lost=True, reason="Slurm job 9 PREEMPTED")),
    ("CANCELLED", None, Exit(exit_code=None, signal="SIGTERM", reason="Slurm job 9 CANCELLED")),
    ("FAILED", None, Exit(exit_code=None, lost=True, reason="Slurm job 9 FAILED, no exit record")),
])
def test_end_of_a_job_takes_the_record_where_it_can_and_slurms_word_where_it_must(state, recorded, expect):
    assert end_of("9", info(state), recorded) == expect


def test_a_job_slurm_forgot_is_its_record_or_lost():
    assert end_of("9", None, Exit(exit_code=0)) == Exit(exit_code=0)
    assert end_of("9", None, None).lost


def run_of(limit=None) -> Run:
    from oaasd.models import TaskSpec
    spec = TaskSpec(command=["true"], time_limit_s=limit)
    return Run(1, 1, 1, "c", {}, spec, job())


@pytest.mark.parametrize("exit_,expect", [
    (Exit(exit_code=None, state=State.TIMEOUT, reason="Slurm job 9 TIMEOUT"), (State.TIMEOUT, Reason.TIME_LIMIT)),
    (Exit(exit_code=137, state=State.OUT_OF_MEMORY), (State.OUT_OF_MEMORY, Reason.OUT_OF_MEMORY)),
    (Exit(exit_code=None, fault=Reason.SLURM_REFUSED, reason="sbatch: error: x"), (State.FAILED, Reason.SLURM_REFUSED)),
])
def test_the_reporter_gives_slurms_decisions_their_own_states(exit_, expect):
    attempt_state, task_state, reason, message = classify(run_of(), exit_, 0)
    assert (task_state, reason) == expect and attempt_state == task_state
    assert message == exit_.reason


def test_a_slurm_node_needs_a_partition_and_takes_unset_sizes_from_slurm():
    with pytest.raises(ValueError, match="partition"):
        NodeConfig(name="c", launcher="slurm")
    assert NodeConfig(name="c", launcher="slurm", partition="p").sized_by_slurm == {"cpus", "memory_mb", "gpus"}
    given = NodeConfig(name="c", launcher="slurm", partition="p", cpus=4, gpus=0)
    assert given.sized_by_slurm == {"memory_mb"}
    assert given.model_copy(update={"memory_mb": 9}).sized_by_slurm == {"memory_mb"}
    with pytest.raises(ValueError):
        NodeConfig(name="c", launcher="slurm", partition="a b")  # one word: never a second sbatch option


def test_a_slurm_node_is_refused_on_a_shared_daemon():
    s = Settings.model_validate({"nodes": [{"name": "c", "launcher": "slurm", "partition": "p"}],
                                 "users": [{"name": "u", "token_sha256": "0" * 64}]})
    assert any("'slurm'" in p for p in launch_problems(s))


def test_attempts_on_a_slurm_node_go_to_the_slurm_launcher_gangs_included():
    assert launcher_kind(["slurm"], 1) == "slurm" and launcher_kind(["slurm"], 4) == "slurm"
    assert launcher_kind(["ssh"], 2) == "mpi" and launcher_kind(["local"], 1) == "local"
