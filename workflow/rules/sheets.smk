rule make_contact_sheets:
    input:
        manifest=res("_work/slices/batch_{batch}.parquet"),
        thumbnails=res("_work/thumbnails/batch_{batch}.parquet"),
        series=res("metadata/series.parquet"),
        script=script("make_contact_sheets"),
    output:
        sheets=res("_work/sheets/batch_{batch}.parquet"),
    log:
        res("logs/make_contact_sheets/batch_{batch}.log"),
    benchmark:
        res("benchmarks/make_contact_sheets/batch_{batch}.tsv")
    params:
        results=results_root,
        tiles=config["sheets"]["tiles"],
    conda:
        "../envs/pipeline.yaml"
    shell:
        "python {input.script:q} --results {params.results:q} --manifest {input.manifest:q}"
        " --thumbnails {input.thumbnails:q} --series {input.series:q} --tiles {params.tiles}"
        " --out {output.sheets:q} > {log:q} 2>&1"
