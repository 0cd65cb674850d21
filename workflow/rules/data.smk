rule download_omniglot:
    output:
        background="resources/omniglot/images_background.zip",
        evaluation="resources/omniglot/images_evaluation.zip",
    params:
        source=config["omniglot"]["source"],
        strict=omniglot_strict,
        out_dir=lambda wildcards, output: Path(output.background).parent,
    log:
        "logs/download_omniglot/omniglot.log",
    conda:
        "../../envs/dmaml.yaml"
    localrule: True
    retries: 3
    shell:
        "python -m dmaml.cli download-omniglot --source {params.source:q} --out-dir {params.out_dir:q} "
        "{params.strict} > {log} 2>&1"


rule preprocess_omniglot:
    input:
        rules.download_omniglot.output,
    output:
        "resources/omniglot.h5",
    params:
        source=lambda wildcards, input: Path(input[0]).parent,
        strict=omniglot_strict,
        val_alphabets=config["omniglot"]["val_alphabets"],
    log:
        "logs/preprocess_omniglot/omniglot.log",
    conda:
        "../../envs/dmaml.yaml"
    benchmark:
        "benchmarks/preprocess_omniglot/omniglot.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m dmaml.cli prepare-omniglot --source {params.source:q} --out {output:q} "
        "--val-alphabets {params.val_alphabets} {params.strict} > {log} 2>&1"


rule preprocess_miniimagenet:
    input:
        miniimagenet_source,
    output:
        "resources/miniimagenet.h5",
    params:
        aggregate=miniimagenet_aggregate,
    log:
        "logs/preprocess_miniimagenet/miniimagenet.log",
    conda:
        "../../envs/dmaml.yaml"
    benchmark:
        "benchmarks/preprocess_miniimagenet/miniimagenet.tsv"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "python -m dmaml.cli prepare-miniimagenet --source {input:q} --out {output:q} {params.aggregate} "
        "--threads {threads} > {log} 2>&1"
