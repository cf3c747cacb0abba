checkpoint merge_metadata:
    input:
        instances=extract_parts("instances"),
        errors=extract_parts("errors"),
        shard_lists=shard_lists(),
        script=script("merge_metadata"),
    output:
        instances=res("metadata/instances.parquet"),
        # metadata/series.parquet is this table with the ratings joined (finalize_tables)
        series=res("_work/series.parquet"),
        errors=res("_work/errors_extract.parquet"),
        # each series' identifying values, which the review page must not show
        identifiers=res("_work/identifiers.parquet"),
    log:
        res("logs/merge_metadata.log"),
    benchmark:
        res("benchmarks/merge_metadata.tsv")
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=2000,
    params:
        keywords=keyword_args(),
        series_per_batch=config["metadata"]["series_per_batch"],
        # per-batch work lists, rewritten only when they change (not declared as
        # outputs, so unchanged batches keep their mtime and are not redone)
        batch_dir=res("_work/batches"),
    shell:
        "python {input.script:q} --instance-parts {input.instances:q}"
        " --error-parts {input.errors:q} {params.keywords}"
        " --series-per-batch {params.series_per_batch}"
        " --instances {output.instances:q} --series {output.series:q}"
        " --errors {output.errors:q} --identifiers {output.identifiers:q}"
        " --batch-dir {params.batch_dir:q}"
        " --shard-lists {input.shard_lists:q} > {log:q} 2>&1"
