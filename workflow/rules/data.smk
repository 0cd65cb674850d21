# Where the zips come from must not make Snakemake fetch again (and re-run everything downstream)
# zips that are here and checked: the source is a function of the output, a kind of param that
# Snakemake's params trigger leaves out. Warnings (checksums) and errors reach the terminal too.
rule download_omniglot:
    output:
        background="resources/omniglot/images_background.zip",
        evaluation="resources/omniglot/images_evaluation.zip",
    log:
        "logs/download_omniglot/omniglot.log",
    retries: 3
    localrule: True
    conda:
        "../../envs/dmaml.yaml"
    params:
        source=lambda wildcards, output: config["omniglot"]["source"],
        strict=omniglot_strict,
        out_dir=lambda wildcards, output: Path(output.background).parent,
    shell:
        "python -m dmaml.cli download-omniglot --source {params.source:q} "
        f"--out-dir {{params.out_dir:q}} {{params.strict}} {log_and_show('WARNING|ERROR')}"


rule preprocess_omniglot:
    input:
        rules.download_omniglot.output,
    output:
        "resources/omniglot.h5",
    log:
        "logs/preprocess_omniglot/omniglot.log",
    benchmark:
        "benchmarks/preprocess_omniglot/omniglot.tsv"
    conda:
        "../../envs/dmaml.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        source=lambda wildcards, input: Path(input[0]).parent,
        strict=omniglot_strict,
        val_alphabets=config["omniglot"]["val_alphabets"],
    shell:
        "python -m dmaml.cli prepare-omniglot --source {params.source:q} --out {output:q} "
        "--val-alphabets {params.val_alphabets} {params.strict} > {log} 2>&1"


rule preprocess_miniimagenet:
    input:
        miniimagenet_source,
    output:
        "resources/miniimagenet.h5",
    log:
        "logs/preprocess_miniimagenet/miniimagenet.log",
    benchmark:
        "benchmarks/preprocess_miniimagenet/miniimagenet.tsv"
    conda:
        "../../envs/dmaml.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        aggregate=miniimagenet_aggregate,
    shell:
        "python -m dmaml.cli prepare-miniimagenet --source {input:q} --out {output:q} {params.aggregate} "
        "--threads {threads} > {log} 2>&1"
