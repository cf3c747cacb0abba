rule render_thumbnails:
    input:
        manifest=res("_work/slices/batch_{batch}.parquet"),
        script=script("render_thumbnails"),
    output:
        thumbnails=res("_work/thumbnails/batch_{batch}.parquet"),
    log:
        res("logs/render_thumbnails/batch_{batch}.log"),
    benchmark:
        res("benchmarks/render_thumbnails/batch_{batch}.tsv")
    # a batch's later steps go before other batches' earlier ones: batches finish one
    # after another, so no lone batch runs its last steps on one core at the end
    priority: 2
    conda:
        "../envs/pipeline.yaml"
    params:
        results=results_root,
        study=STUDY,
        size=config["thumbnails"]["size"],
        ct_window=ct_window_args(),
    shell:
        "python {input.script:q} --results {params.results:q} --manifest {input.manifest:q}"
        " --size {params.size} {params.ct_window} --out {output.thumbnails:q} --study {params.study:q} > {log:q} 2>&1"
