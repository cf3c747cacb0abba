# dicom-study-pipeline: a folder of DICOM files -> metadata tables, slices, thumbnails,
# contact sheets and a review page. See README.md.
import os

from snakemake.utils import min_version

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/slices.smk"
include: "workflow/rules/thumbnails.smk"
include: "workflow/rules/sheets.smk"
include: "workflow/rules/review.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
