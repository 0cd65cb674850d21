rule evaluate_shots:
    """Table 1: test MSE of a sine run's final parameters after adaptation on K points."""
    input:
        run=f"{RUN}/run.json",
        code=TRAINING_CODE,
    output:
        f"{RUN}/eval/shots{{k}}.json",
    log:
        f"logs/evaluate_shots/{RUN_ID}-shots{{k}}.log",
    wildcard_constraints:
        k=r"\d+",
    conda:
        "../../envs/dmaml.yaml"
    params:
        run=lambda wildcards, input: Path(input.run).parent,
        test_tasks=lambda wildcards: settings(wildcards.experiment)["test_tasks"],
    shell:
        "python -m dmaml.cli evaluate --run {params.run:q} --shots {wildcards.k} "
        "--test_tasks {params.test_tasks} --out {output:q} > {log} 2>&1"


rule evaluate_extrapolation:
    """Figure 2: a sine run adapted on points from the left half, predicted over [-5, 5]."""
    input:
        run=f"{RUN}/run.json",
        code=TRAINING_CODE,
    output:
        f"{RUN}/eval/extrapolation.csv",
    log:
        f"logs/evaluate_extrapolation/{RUN_ID}.log",
    conda:
        "../../envs/dmaml.yaml"
    params:
        run=lambda wildcards, input: Path(input.run).parent,
    shell:
        "python -m dmaml.cli evaluate --run {params.run:q} --extrapolate {output:q} > {log} 2>&1"
