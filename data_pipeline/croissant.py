"""Croissant 1.0 (JSON-LD) metadata for token datasets and mixtures, built from their manifests.

Every file a manifest vouches for becomes a `cr:FileObject` with its sha256 (which `mlcroissant`
checks when it reads the file); the provenance table (dataset) or the document sequence (mixture)
becomes a `cr:RecordSet` whose fields read that Parquet file's columns. `contentUrl`s are relative to
the JSON-LD file, so a dataset directory can be moved or published as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.rundir import canonical_json, write_atomic
from data_pipeline.tokens import format as fmt

CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
PARQUET = "application/x-parquet"
BINARY = "application/octet-stream"
JSON = "application/json"
TYPES = {"string": "sc:Text", "int64": "sc:Integer", "int32": "sc:Integer"}


def file_object(record: dict[str, Any], encoding: str, description: str) -> dict[str, Any]:
    return {
        "@type": "cr:FileObject",
        "@id": record["path"],
        "name": record["path"],
        "description": description,
        "contentUrl": record["path"],
        "contentSize": f"{record['bytes']} B",
        "encodingFormat": encoding,
        "sha256": record["sha256"],
    }


def record_set(name: str, file_id: str, columns: dict[str, str], description: str) -> dict[str, Any]:
    return {
        "@type": "cr:RecordSet",
        "@id": name,
        "name": name,
        "description": description,
        "field": [
            {
                "@type": "cr:Field",
                "@id": f"{name}/{column}",
                "name": column,
                "dataType": TYPES[kind],
                "source": {"fileObject": {"@id": file_id}, "extract": {"column": column}},
            }
            for column, kind in columns.items()
        ],
    }


def _licenses(sources: dict[str, Any]) -> list[str]:
    found = sorted({lic for entry in sources.values() for lic in entry.get("licenses", {})})
    return [f"https://spdx.org/licenses/{lic}.html" for lic in found]


def dataset_jsonld(manifest: dict[str, Any], name: str) -> dict[str, Any]:
    files = [file_object(manifest["provenance"], PARQUET, "one row per document: id, source, license, "
                         "url, source_version, shard and its global token range [token_start, token_end)")]
    for shard in manifest["shards"]:
        files.append(file_object(shard, BINARY, f"{shard['n_tokens']} little-endian {manifest['dtype']} "
                                 f"token ids of {shard['n_docs']} documents, EOS after each"))
        files.append(file_object(shard["index"], BINARY, "uint64 cumulative document ends of "
                                 f"{shard['path']}"))
    for record in manifest["tokenizer"]["files"]:
        files.append(file_object(record, JSON, "tokenizer that produced the tokens"))
    columns = {field.name: str(field.type) for field in fmt.PROVENANCE_SCHEMA}
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": (
            f"Tokenized dataset: {manifest['n_docs']} documents, {manifest['n_tokens']} tokens "
            f"({manifest['dtype']}) from sources {', '.join(manifest['sources'])}. "
            "Every token maps to its document through the provenance table."
        ),
        "license": _licenses(manifest["sources"]),
        "version": manifest["schema"].split("/")[-1] + ".0.0",
        "citeAs": f"{name}: atom {manifest['kind']} (manifest schema {manifest['schema']})",
        "distribution": files,
        "recordSet": [record_set("documents", manifest["provenance"]["path"], columns,
                                 "provenance of every document in token order")],
    }


def mixture_jsonld(manifest: dict[str, Any], name: str) -> dict[str, Any]:

    seq = manifest["sequence"]
    files = [
        file_object(seq["table"], PARQUET, "the mixture's documents in training order"),
        file_object(seq["array"], BINARY, "the same sequence as a memory-mappable structured .npy"),
    ]
    return {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CONFORMS_TO,
        "name": name,
        "description": (
            f"Data mixture: {manifest['n_docs']} documents, {manifest['n_tokens']} tokens from "
            f"{len(manifest['datasets'])} tokenized dataset(s); sources {', '.join(manifest['sources'])}."
        ),
        "license": _licenses(manifest["sources"]),
        "version": manifest["schema"].split("/")[-1] + ".0.0",
        "citeAs": f"{name}: atom {manifest['kind']} (manifest schema {manifest['schema']})",
        "distribution": files,
        "recordSet": [record_set("sequence", seq["table"]["path"], fmt.SEQUENCE_COLUMNS,
                                 "documents in mixture order with source, license and repetition epoch")],
    }


def _name(manifest_sha: str, kind: str) -> str:
    return f"atom-{kind}-{manifest_sha[:12]}"


def croissant_text(root: Path, manifest: dict[str, Any]) -> str:
    """The exact text of `root`'s croissant.json for this manifest (dataset or mixture); the name pins
    the sha256 of `root/manifest.json`, so the file is only right for the manifest bytes it was made from.
    `atom audit` regenerates it and compares byte for byte."""
    from core.manifest import sha256_file
    sha = sha256_file(root / fmt.MANIFEST)
    if manifest.get("schema") == fmt.MIXTURE_SCHEMA:
        doc = mixture_jsonld(manifest, _name(sha, "mixture"))
    else:
        doc = dataset_jsonld(manifest, _name(sha, "tokens"))
    return canonical_json(doc)


def write_croissant(root: Path, manifest: dict[str, Any]) -> Path:
    """Write croissant.json next to the (already written) manifest.json it describes."""
    path = root / fmt.CROISSANT
    write_atomic(path, croissant_text(root, manifest))
    return path
