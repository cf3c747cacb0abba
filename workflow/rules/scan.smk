checkpoint scan_study:
    input:
        study=STUDY,
        script=script("scan_study"),
    output:
        shards=directory(res("_work/scan")),
    log:
        res("logs/scan_study.log"),
    benchmark:
        res("benchmarks/scan_study.tsv")
    conda:
        "../envs/pipeline.yaml"
    params:
        files_per_shard=config["scan"]["files_per_shard"],
    shell:
        "python {input.script:q} --study {input.study:q} --out-dir {output.shards:q}"
        " --files-per-shard {params.files_per_shard} > {log:q} 2>&1"
