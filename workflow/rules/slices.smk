rule save_slices:
    input:
        instances=res("_work/batches/batch_{batch}.instances.parquet"),
        series=res("_work/batches/batch_{batch}.series.parquet"),
        script=script("save_slices"),
    output:
        manifest=res("_work/slices/batch_{batch}.parquet"),
        errors=res("_work/slices/batch_{batch}.errors.parquet"),
        # always written (empty when volumes are off); the volumes are under volumes/
        volumes=res("_work/volumes/batch_{batch}.parquet"),
    log:
        res("logs/save_slices/batch_{batch}.log"),
    benchmark:
        res("benchmarks/save_slices/batch_{batch}.tsv")
    # a batch's later steps go before other batches' earlier ones: batches finish one
    # after another, so no lone batch runs its last steps on one core at the end
    priority: 1
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
    params:
        study=STUDY,
        results=results_root,
        selection=selection_args(),
        volumes=volume_args(),
    shell:
        "python {input.script:q} --study {params.study:q} --results {params.results:q}"
        " --instances {input.instances:q} --series {input.series:q} --batch {wildcards.batch}"
        " {params.selection} {params.volumes} --manifest {output.manifest:q}"
        " --errors {output.errors:q} --volumes {output.volumes:q}"
        " > {log:q} 2>&1"
