rule finalize_tables:
    input:
        manifests=batch_parts("_work/slices/batch_{batch}.parquet"),
        thumbnails=batch_parts("_work/thumbnails/batch_{batch}.parquet"),
        errors=error_parts,
        # sheets and series: it removes outputs no longer produced, once all are drawn
        sheets=batch_parts("_work/sheets/batch_{batch}.parquet"),
        series=res("_work/series.parquet"),
        # reviewers' ratings (review.ratings): a new file or content reruns only this and the page
        ratings=ratings_input(),
        volumes=batch_parts("_work/volumes/batch_{batch}.parquet"),
        script=script("finalize_tables"),
    output:
        slices=res("metadata/slices.parquet"),
        errors=res("metadata/errors.parquet"),
        series=res("metadata/series.parquet"),
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
        " --series-out {output.series:q} --ratings {input.ratings:q}"
        " --volume-parts {input.volumes:q} --volumes {output.volumes:q}"
        " > {log:q} 2>&1"


rule build_review_page:
    input:
        series=res("metadata/series.parquet"),
        slices=res("metadata/slices.parquet"),
        errors=res("metadata/errors.parquet"),
        # which series each error row's file belongs to, and SEG links
        instances=res("metadata/instances.parquet"),
        identifiers=res("_work/identifiers.parquet"),
        sheets=batch_parts("_work/sheets/batch_{batch}.parquet"),
        script=script("build_review_page"),
        template=str(SCRIPTS / "review_page.html"),
    output:
        page=report(
            res("index.html"),
            caption="../report/review_page.rst",
            category="Review",
        ),
        # the page's data; grid previews go to review/previews/ (not declared: one per series)
        data=res("review/series.js"),
    log:
        res("logs/build_review_page.log"),
    benchmark:
        res("benchmarks/build_review_page.tsv")
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python {input.script:q} --series {input.series:q} --slices {input.slices:q}"
        " --errors {input.errors:q} --instances {input.instances:q}"
        " --identifiers {input.identifiers:q}"
        " --sheets {input.sheets:q} --out {output.page:q} > {log:q} 2>&1"
