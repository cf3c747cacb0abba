# dicom-study-pipeline: a folder of DICOM files -> metadata tables, slices, thumbnails,
# contact sheets and a review page. See README.md.
# The defaults in config/config.yaml are read in workflow/rules/common.smk, beneath any
# --configfile or --config the user gives (a `configfile:` directive would log a line on
# every --config and would only be found from the repository folder).
from snakemake.utils import min_version

min_version("9.17")  # priority given by a function (extract_metadata)


include: "workflow/rules/common.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/slices.smk"
include: "workflow/rules/thumbnails.smk"
include: "workflow/rules/sheets.smk"
include: "workflow/rules/review.smk"


onsuccess:
    cancel_pending_timers()


onerror:
    cancel_pending_timers()


rule all:
    default_target: True
    input:
        final_outputs(),
