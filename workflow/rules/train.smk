rule train_dmaml:
    """One DMAML run. Its folder also holds metrics.csv, test.csv and checkpoints/; only run.json
    (rewritten last with status "finished") is declared, so a failed or killed job's cleanup
    keeps the checkpoints and the retried job resumes from them. Its progress lines reach the
    terminal as well as the log."""
    input:
        data=dataset_file,
        code=TRAINING_CODE,
    output:
        f"{RUN}/run.json",
    log:
        f"logs/train_dmaml/{RUN_ID}.log",
    benchmark:
        f"benchmarks/train_dmaml/{RUN_ID}.tsv"
    conda:
        "../../envs/dmaml.yaml"
    threads: train_threads
    resources:
        mem_mb=train_mem,
        runtime=train_runtime,
        nodes=cluster_nodes,
        tasks=cluster_nodes,
        mpi=cluster_mpi,
    params:
        flags=run_flags,
        out=lambda wildcards, output: Path(output[0]).parent,
        launcher=train_launcher,
    shell:
        "{params.launcher}python -m dmaml.cli train --out {params.out:q} {params.flags} "
        f"--threads {{threads}} --diverged-ok {log_and_show('INFO|WARNING|ERROR')}"
