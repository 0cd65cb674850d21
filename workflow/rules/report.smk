# The report's entries: each table as HTML (the paper's layout, shown in the report) and CSV (its
# data), each figure as PNG; their captions are workflow/report/*.rst. Each table shows the
# paper's published values beside ours (workflow/paper/tables.csv, an input so that editing it
# re-makes the tables and no training). Outputs are update(): a failing job (a run folder with
# damaged rows) leaves the previous table or figure in place instead of deleting it.
PAPER = str(Path(workflow.basedir, "workflow", "paper", "tables.csv"))


rule make_table:
    """Tables 2-5 and 7: test scores at each checkpoint step, best seed per row."""
    input:
        runs=lambda wildcards: [f"{d}/run.json" for d in run_dirs(wildcards.table)],
        paper=PAPER,
        code=REPORT_CODE,
    output:
        csv=report(
            update("results/tables/{table}.csv"),
            caption="../report/table.rst",
            category="Tables",
        ),
        md=update("results/tables/{table}.md"),
        html=report(
            update("results/tables/{table}.html"),
            caption="../report/table.rst",
            category="Tables",
        ),
    log:
        "logs/make_table/{table}.log",
    wildcard_constraints:
        table="table[2-9]",
    conda:
        "../../envs/dmaml.yaml"
    params:
        runs=lambda wildcards, input: [str(Path(r).parent) for r in input.runs],
        title=lambda wildcards: settings(wildcards.table).get("title", wildcards.table),
    shell:
        "python -m dmaml.cli table checkpoints {params.runs:q} --out {output.csv:q} "
        "--title {params.title:q} --paper {input.paper:q} --paper-table {wildcards.table} > {log} 2>&1"


rule make_table1:
    """Table 1: sine test MSE after one step on K points, best seed per n."""
    input:
        evals=lambda wildcards: [
            f"{d}/eval/shots{k}.json" for d in run_dirs("table1") for k in settings("table1")["test_shots"]
        ],
        paper=PAPER,
        code=REPORT_CODE,
    output:
        csv=report(
            update("results/tables/table1.csv"),
            caption="../report/table.rst",
            category="Tables",
        ),
        md=update("results/tables/table1.md"),
        html=report(
            update("results/tables/table1.html"),
            caption="../report/table.rst",
            category="Tables",
        ),
    log:
        "logs/make_table/table1.log",
    conda:
        "../../envs/dmaml.yaml"
    params:
        title=lambda wildcards: settings("table1").get("title", "table1"),
    shell:
        "python -m dmaml.cli table shots {input.evals:q} --out {output.csv:q} --title {params.title:q} "
        "--paper {input.paper:q} --paper-table table1 > {log} 2>&1"


rule make_reproduction:
    """Our tables of `reproduction:` (config) beside the paper's, summed up on one page."""
    input:
        tables=lambda wildcards: [f"results/tables/{name}.csv" for name in config["reproduction"]],
        paper=PAPER,
        code=REPORT_CODE,
    output:
        update("results/tables/reproduction.md"),
    log:
        "logs/make_reproduction/reproduction.log",
    conda:
        "../../envs/dmaml.yaml"
    shell:
        "python -m dmaml.report.paper {input.tables:q} --paper {input.paper:q} --out {output:q} > {log} 2>&1"


rule make_ablation:
    """An ablation table: each arm's (experiment's) test scores beside the paper's Table 2 with
    verdicts, and the arms' validation curves (dmaml.report.ablation)."""
    input:
        runs=lambda wildcards: [
            f"{d}/run.json" for arm in ablation_arms(wildcards.name) for d in run_dirs(arm)
        ],
        paper=PAPER,
        code=REPORT_CODE,
    output:
        csv=update("results/tables/{name}.csv"),
        md=report(update("results/tables/{name}.md"), caption="../report/table.rst", category="Ablation"),
        png=report(update("results/tables/{name}.png"), caption="../report/figure.rst", category="Ablation"),
    log:
        "logs/make_ablation/{name}.log",
    wildcard_constraints:
        name="ablation[A-Za-z0-9_]*",
    conda:
        "../../envs/dmaml.yaml"
    params:
        arms=lambda wildcards: [f"{arm}={d}" for arm in ablation_arms(wildcards.name) for d in run_dirs(arm)],
    shell:
        "python -m dmaml.report.ablation {params.arms:q} --paper {input.paper:q} --out {output.csv:q} "
        "--figure {output.png:q} > {log} 2>&1"


rule plot_figure:
    """Figures 3-7: validation curves, mean and std over seeds."""
    input:
        runs=lambda wildcards: [f"{d}/run.json" for d in run_dirs(wildcards.figure)],
        code=REPORT_CODE,
    output:
        png=report(
            update("results/figures/{figure}.png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=update("results/figures/{figure}.pdf"),
        txt=update("results/figures/{figure}.txt"),
    log:
        "logs/plot_figure/{figure}.log",
    wildcard_constraints:
        figure="fig[3-7]",
    conda:
        "../../envs/dmaml.yaml"
    params:
        runs=lambda wildcards, input: [str(Path(r).parent) for r in input.runs],
        kind=lambda wildcards: FIGURE_KINDS[wildcards.figure],
        max_step=lambda wildcards: config["experiments"][wildcards.figure].get("max_step", 0),
    shell:
        "python -m dmaml.cli figure {params.kind} {params.runs:q} --max_step {params.max_step} "
        "--out {output.png:q} > {log} 2>&1"


rule plot_wall_figure:
    """Figures 3 and 5 against the measured seconds of their runs, and the seconds per MAML step."""
    input:
        runs=lambda wildcards: [f"{d}/run.json" for d in run_dirs(wildcards.figure)],
        code=REPORT_CODE,
    output:
        png=report(
            update("results/figures/{figure}_wall.png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=update("results/figures/{figure}_wall.pdf"),
        txt=update("results/figures/{figure}_wall.txt"),
        csv=report(
            update("results/figures/{figure}_wall.csv"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        md=update("results/figures/{figure}_wall.md"),
    log:
        "logs/plot_figure/{figure}_wall.log",
    wildcard_constraints:
        figure="fig[35]",
    conda:
        "../../envs/dmaml.yaml"
    params:
        runs=lambda wildcards, input: [str(Path(r).parent) for r in input.runs],
        kind=lambda wildcards: f"{FIGURE_KINDS[wildcards.figure]}_wall",
    shell:
        "python -m dmaml.cli figure {params.kind} {params.runs:q} --out {output.png:q} > {log} 2>&1"


rule plot_extrapolation:
    """Figure 2: sine models of each n adapted on the left half of a task."""
    input:
        curves=lambda wildcards: [f"{d}/eval/extrapolation.csv" for d in run_dirs("fig2")],
        code=REPORT_CODE,
    output:
        png=report(
            update("results/figures/fig2.png"),
            caption="../report/figure.rst",
            category="Figures",
        ),
        pdf=update("results/figures/fig2.pdf"),
        txt=update("results/figures/fig2.txt"),
    log:
        "logs/plot_figure/fig2.log",
    conda:
        "../../envs/dmaml.yaml"
    shell:
        "python -m dmaml.cli figure extrapolation {input.curves:q} --out {output.png:q} > {log} 2>&1"
