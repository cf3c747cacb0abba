rule extract_metadata:
    input:
        shard=res("_work/scan/shard_{shard}.jsonl"),
        script=script("extract_metadata"),
    output:
        instances=res("_work/extract/shard_{shard}.instances.parquet"),
        errors=res("_work/extract/shard_{shard}.errors.parquet"),
    log:
        res("logs/extract_metadata/shard_{shard}.log"),
    benchmark:
        res("benchmarks/extract_metadata/shard_{shard}.tsv")
    # larger shards first, so that the cores finish their last shards together
    priority: shard_priority
    conda:
        "../envs/pipeline.yaml"
    resources:
        mem_mb=1000,
    params:
        study=STUDY,
        keywords=keyword_args(),
        privacy=config["privacy"]["mode"],
        # rows of unchanged files are reused from here (not an output: Snakemake would
        # delete it before the job)
        cache=res("_work/extract_cache/shard_{shard}"),
    shell:
        "python {input.script:q} --study {params.study:q} --shard {input.shard:q}"
        " --instances {output.instances:q} --errors {output.errors:q} {params.keywords}"
        " --privacy {params.privacy} --cache {params.cache:q}"
        " > {log:q} 2>&1"
