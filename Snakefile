# dmaml: reproducing "Investigating parallelization of MAML" (SPEC.md). Run from this folder:
#   snakemake --cores 2 resources/omniglot.h5
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


rule all:
    default_target: True
    input:
        data_targets(),
