rule make_contact_sheets:
    input:
        manifest=res("_work/slices/batch_{batch}.parquet"),
        thumbnails=res("_work/thumbnails/batch_{batch}.parquet"),
        series=res("_work/batches/batch_{batch}.series.parquet"),
        script=script("make_contact_sheets"),
    output:
        sheets=res("_work/sheets/batch_{batch}.parquet"),
        report_dir=report(
            directory(res("_work/sheets/batch_{batch}")),
            patterns=["{series_key}.png"],
            caption="../report/contact_sheets.rst",
            category="Contact sheets",
            labels={"series": "{series_key}"},
        ),
    log:
        res("logs/make_contact_sheets/batch_{batch}.log"),
    benchmark:
        res("benchmarks/make_contact_sheets/batch_{batch}.tsv")
    # a batch's later steps go before other batches' earlier ones: batches finish one
    # after another, so no lone batch runs its last steps on one core at the end
    priority: 3
    conda:
        "../envs/pipeline.yaml"
    params:
        results=results_root,
        tiles=config["sheets"]["tiles"],
        study=STUDY,
    shell:
        "python {input.script:q} --results {params.results:q} --manifest {input.manifest:q}"
        " --thumbnails {input.thumbnails:q} --series {input.series:q} --tiles {params.tiles}"
        " --out {output.sheets:q} --report-dir {output.report_dir:q} --study {params.study:q}"
        " > {log:q} 2>&1"
