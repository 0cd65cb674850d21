# dmaml: the experiments of "Investigating parallelization of MAML". Run from this folder:
#   snakemake --cores 32 results/tables/table2.csv     (the paper's grid, config.yaml)
#   snakemake --cores 2 table2 fig3 --configfile presets/quick.yaml   (minutes, small grid)
from snakemake.utils import min_version

min_version("9.27")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Tables 1-5 and Figures 2-6 are the paper's; Table 7 and Figure 7 (merge strategies) go beyond it
TABLES = [f"results/tables/table{i}.{ext}" for i in (1, 2, 3, 4, 5, 7) for ext in ("csv", "md")]
FIGURES = [f"results/figures/fig{i}.{ext}" for i in range(2, 8) for ext in ("png", "pdf")]
# Figures 3 and 5 against measured seconds, with the seconds per MAML step (their runs, no others)
WALL = {f: [f"results/figures/{f}_wall.{e}" for e in ("png", "pdf", "csv", "md")] for f in ("fig3", "fig5")}
FIGURES += [path for paths in WALL.values() for path in paths]


rule all:
    """Every table and figure (Table 5 needs a miniImageNet source)."""
    default_target: True
    input:
        TABLES,
        FIGURES,
        "results/tables/reproduction.md",


rule figures:
    input:
        FIGURES,


rule reproduction:
    """Our tables beside the paper's, summed up (results/tables/reproduction.md)."""
    input:
        "results/tables/reproduction.md",


rule data:
    input:
        data_targets(),


rule table1:
    input:
        "results/tables/table1.csv",
        "results/tables/table1.md",


rule table2:
    input:
        "results/tables/table2.csv",
        "results/tables/table2.md",


rule table3:
    input:
        "results/tables/table3.csv",
        "results/tables/table3.md",


rule table4:
    input:
        "results/tables/table4.csv",
        "results/tables/table4.md",


rule table5:
    input:
        "results/tables/table5.csv",
        "results/tables/table5.md",


rule table7:
    """Beyond the paper: test accuracy by merge strategy at Table 2's checkpoints."""
    input:
        "results/tables/table7.csv",
        "results/tables/table7.md",


rule ablation:
    """Beyond the paper: which choices it leaves open explain its numbers (config `ablation:`)."""
    input:
        [
            f"results/tables/{name}.{ext}"
            for name in config.get("ablation", {})
            for ext in ("csv", "md", "png")
        ],


rule fig2:
    input:
        "results/figures/fig2.png",
        "results/figures/fig2.pdf",


rule fig3:
    input:
        "results/figures/fig3.png",
        "results/figures/fig3.pdf",


rule fig3_wall:
    """Figure 3 against measured seconds, and the seconds per MAML step by n."""
    input:
        WALL["fig3"],


rule fig4:
    input:
        "results/figures/fig4.png",
        "results/figures/fig4.pdf",


rule fig5:
    input:
        "results/figures/fig5.png",
        "results/figures/fig5.pdf",


rule fig5_wall:
    """Figure 5 against MAML steps, tasks and measured seconds, and the seconds per MAML step by t."""
    input:
        WALL["fig5"],


rule fig6:
    input:
        "results/figures/fig6.png",
        "results/figures/fig6.pdf",


rule fig7:
    """Beyond the paper: validation by merge strategy (does a smarter merge stop the divergence?)."""
    input:
        "results/figures/fig7.png",
        "results/figures/fig7.pdf",
