rule finalize_tables:
    input:
        manifests=batch_parts("_work/slices/batch_{batch}.parquet"),
        thumbnails=batch_parts("_work/thumbnails/batch_{batch}.parquet"),
        errors=error_parts,
        # sheets and series: it removes outputs no longer produced, once all are drawn
        sheets=batch_parts("_work/sheets/batch_{batch}.parquet"),
        series=res("metadata/series.parquet"),
        volumes=batch_parts("_work/volumes/batch_{batch}.parquet"),
        script=script("finalize_tables"),
    output:
        slices=res("metadata/slices.parquet"),
        errors=res("metadata/errors.parquet"),
        volumes=res("metadata/volumes.parquet"),
    log:
        res("logs/finalize_tables.log"),
    benchmark:
        res("benchmarks/finalize_tables.tsv")
    conda:
        "../envs/pipeline.yaml"
    params:
        results=results_root,
    shell:
        "python {input.script:q} --manifests {input.manifests:q}"
        " --thumbnails {input.thumbnails:q} --error-parts {input.errors:q}"
        " --slices {output.slices:q} --errors {output.errors:q}"
        " --results {params.results:q} --sheets {input.sheets:q} --series {input.series:q}"
        " --volume-parts {input.volumes:q} --volumes {output.volumes:q}"
        " > {log:q} 2>&1"


rule build_review_page:
    input:
        series=res("metadata/series.parquet"),
        slices=res("metadata/slices.parquet"),
        errors=res("metadata/errors.parquet"),
        sheets=batch_parts("_work/sheets/batch_{batch}.parquet"),
        script=script("build_review_page"),
    output:
        page=report(
            res("index.html"),
            caption="../report/review_page.rst",
            category="Review",
        ),
    log:
        res("logs/build_review_page.log"),
    benchmark:
        res("benchmarks/build_review_page.tsv")
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python {input.script:q} --series {input.series:q} --slices {input.slices:q}"
        " --errors {input.errors:q} --sheets {input.sheets:q} --out {output.page:q}"
        " > {log:q} 2>&1"
