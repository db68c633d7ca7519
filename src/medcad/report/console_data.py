"""Rich tables for the terminal about a dataset: `data inspect`'s summary and `data audit`'s findings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_summary(s: dict, console: Console | None = None) -> None:
    """Print the output of `medcad.data.summary.summarize`."""
    c = console or Console()
    bad = s.get("n_unreadable")
    unreadable = f", [bold red]{bad} of them unreadable[/] (below: train stops on them)" if bad else ""
    c.print(f"[bold]{s['root']}[/] — layout [cyan]{s['layout']}[/], {s['n_images']} images{unreadable}")
    for note in s.get("notes", []):
        c.print(f"  • {note}", highlight=False)
    for note, n in (s.get("decoding") or {}).items():
        c.print(f"  • {note}: {n} image(s)", highlight=False)
    t = Table("label", "domain", "subgroup", "images", title="Images per label × domain × subgroup")
    for row in s["by_label_domain_subgroup"]:
        t.add_row(row["label"] or "(none)", row["domain"] or "—", row["subgroup"] or "—", str(row["n"]))
    c.print(t)
    w, h = s["width"], s["height"]
    facts = Table(show_header=False, box=None)
    if s.get("findings"):
        shown = ", ".join(f"{k} {n}" for k, n in s["findings"].items())
        facts.add_row(
            "images per finding", f"{shown} (label cells of several findings split, as --task multilabel reads)"
        )
    facts.add_row("patients / groups", str(s["n_groups"]) if s["n_groups"] else "none (duplicates will group)")
    facts.add_row("masks", f"{s['n_masks']} of {s['n_images']} images ({s['n_multi_masks']} made of several files)")
    per_class = ", ".join(f"{c} {n}" for c, n in s.get("box_classes", {}).items())
    facts.add_row(
        "boxes", f"{s['n_boxes']} boxes on {s['n_images_with_boxes']} images" + (f" ({per_class})" if per_class else "")
    )
    if w:
        facts.add_row("width px", f"{w['min']}–{w['max']} (median {w['median']})")
        facts.add_row("height px", f"{h['min']}–{h['max']} (median {h['median']})")
        facts.add_row("distinct sizes", str(s["n_distinct_sizes"]))
    if s["n_dicom_frames"]:
        facts.add_row("frames (DICOM, TIFF pages, volume slices)", str(s["n_dicom_frames"]))
    if s["extra_columns"]:
        facts.add_row("extra columns", ", ".join(s["extra_columns"]))
    facts.add_row("manifest", s.get("manifest_csv", ""))
    c.print(facts)
    _print_problems(c, s["problems"], "Problems (left out or unreadable)")
    unread = [[x["path"], x["reason"]] for x in (s.get("ledger") or {}).get("not_read", [])]
    _print_problems(c, unread, "Files under the dataset folder that no reader used")


def _print_problems(c: Console, rows: list[list[str]], title: str, limit: int = 30) -> None:
    if not rows:
        return
    t = Table("file", "problem", title=f"{title}: {len(rows)}", title_style="bold yellow")
    for row in rows[:limit]:
        t.add_row(str(row[0]), " — ".join(str(x) for x in row[1:]))
    if len(rows) > limit:
        t.add_row("…", f"{len(rows) - limit} more (use --json)")
    c.print(t)


def print_audit(r: dict, console: Console | None = None) -> None:
    """Print the output of `medcad.data.audit.audit`."""
    c = console or Console()
    c.print(f"[bold]Audit[/] of {r['n_images']} images")
    _print_problems(c, r["manifest_problems"], "Manifest rows left out")
    _print_problems(c, r.get("not_read", []), "Files under the dataset folder that no reader used")
    _print_problems(c, r["unreadable"], "Unreadable or corrupt images")
    _print_problems(c, r["unreadable_masks"], "Unreadable masks")
    _print_problems(c, r["mask_size_mismatch"], "Masks whose size differs from the image")
    _print_problems(c, r.get("mask_grid_mismatch", []), "Label maps on another voxel grid than their image's")
    if r.get("mask_decoding"):
        rules = "; ".join(f"{n} masks: {rule}" for rule, n in r["mask_decoding"].items())
        c.print(f"masks read as: {rules} ({len(r['non_binary_masks'])} not strictly binary)")
        if not (r.get("label_maps") or {}).get("classes"):  # label maps hold several values: listed below as read
            _print_problems(c, r["non_binary_masks"], "Masks not strictly binary (read as the rule above says)")
    if r.get("all_masks_empty"):
        c.print("[bold red]Every mask decodes as empty: a segmentation run would learn nothing.[/]")
        _print_problems(c, r["empty_masks"][:5], "Empty masks, with the values found")
    elif r.get("empty_masks"):
        c.print(f"{len(r['empty_masks'])} masks are empty (lesion-free images?)")
    _print_problems(c, r.get("full_frame_masks", []), "Masks covering (nearly) the whole frame")
    _print_problems(
        c, r.get("inverted_masks", []), "Masks whose lesion is most of the frame and its whole border (inverted?)"
    )
    _print_problems(
        c, r.get("speck_only_masks", []), "Masks whose whole lesion is specks (a detection run draws no box from them)"
    )
    if r.get("speck_masks"):
        c.print(f"{len(r['speck_masks'])} masks hold specks beside their lesion (stray marks? they raise HD95)")
    _print_label_maps(c, r.get("label_maps"))
    _print_problems(c, r.get("box_problems", []), "Boxes a detection run clips, drops or keeps as lines")
    if r.get("images_without_usable_boxes"):
        shown = ", ".join(r["images_without_usable_boxes"][:5]) + ("..." * (len(r["images_without_usable_boxes"]) > 5))
        c.print(
            f"[bold red]{len(r['images_without_usable_boxes'])} image(s) have boxes but none usable[/]: a detection "
            f"run stops on them (--allow-missing leaves them out): {shown}"
        )
    if r["empty_labels"]:
        c.print(f"[yellow]{len(r['empty_labels'])} images have no label[/] (fine for segmentation or detection).")
    c.print(
        f"exact duplicate groups: {len(r['exact_duplicates'])}; near-duplicate groups: "
        f"{len(r['near_duplicates'])} holding {r['n_images_in_duplicate_groups']} images"
    )
    if r["cross_label_duplicates"]:
        t = Table(
            "labels",
            "images",
            title=f"Duplicates under different labels: {len(r['cross_label_duplicates'])}",
            title_style="bold red",
        )
        for g, labels in zip(r["cross_label_duplicates"], r["cross_label_duplicate_labels"], strict=True):
            t.add_row(" / ".join(labels), ", ".join(g))
        c.print(t)
    if r.get("mask_like_images"):
        shown = ", ".join(r["mask_like_images"][:5]) + (", ..." if len(r["mask_like_images"]) > 5 else "")
        c.print(
            f"[bold yellow]{len(r['mask_like_images'])} image(s) hold two grey values, as masks do[/] (read as "
            f"images: a mask misnamed, or without its image?): {shown}"
        )
    if r.get("low_content_images"):
        c.print(f"{len(r['low_content_images'])} nearly uniform frames (blank or black): not grouped as duplicates")
    for g in r.get("large_duplicate_groups", []):
        unit, n_units = next(iter(g["spans"].items()))
        c.print(
            f"[bold yellow]One near-duplicate group holds {g['size']} images ({g['fraction']:.0%}) across "
            f"{n_units} {unit}[/]: a split grouped by duplicates cannot separate them. "
            f"{g['n_joining_links']} links join images of different {unit}; the weakest:"
        )
        t = Table("image", "near duplicate of", "hash bits", "correlation")
        for x in g["joining_links"]:
            t.add_row(x["a"], x["b"], str(x["distance"]), f"{x['correlation']:.3f}")
        c.print(t)
        c.print(
            "Look at these pairs: if they are different images, the near-duplicate test is too loose for this data: "
            "split with --group patient (or --group-from REGEX); if they are the same images, the same patient "
            "appears under several ids or folders."
        )
    if r["near_duplicates"]:
        t = Table("size", "images", title="Near-duplicate groups (largest first)")
        for g in sorted(r["near_duplicates"], key=len, reverse=True)[:15]:
            t.add_row(str(len(g)), ", ".join(g[:12]) + (f", … ({len(g) - 12} more)" if len(g) > 12 else ""))
        c.print(t)
    _print_interface(c, r.get("interface"))
    for fold in r.get("leakage", []):
        n_dup, n_pat = len(fold["duplicate_groups_across"]), len(fold["patients_across"])
        style = "red" if n_dup or n_pat else "green"
        c.print(
            f"[{style}]fold {fold['fold']}: {n_dup} duplicate groups and {n_pat} patients in both train and test[/]"
        )
    blocking = ("unreadable", "unreadable_masks", "mask_size_mismatch", "cross_label_duplicates")
    clean = not any(r.get(k) for k in (*blocking, "images_without_usable_boxes"))
    clean = clean and not (r.get("label_maps") or {}).get("problems")
    c.print("[green]No blocking problems found.[/]" if clean else "[yellow]See the findings above.[/]")


def _print_label_maps(c: Console, f: dict | None) -> None:
    """The masks read as label maps (audit's "label_maps"): the classes, where they came from, the images holding
    each, and the masks a segment-multiclass run stops on."""
    if not f:
        return
    if "classes" in f:
        held = ", ".join(f"{name} {n}" for name, n in f["images_with_class"].items())
        c.print(f"label maps, classes {f['classes']} (from {f['source']}): images holding each: {held}")
    if f.get("absent_classes"):
        c.print(
            f"[bold yellow]class(es) in no mask: {', '.join(f['absent_classes'])}[/]: not learnable from these "
            "images, scored only by false positives"
        )
    _print_problems(c, f["problems"], "Label maps a segment-multiclass run stops on")


def _print_interface(c: Console, f: dict | None, limit: int = 8) -> None:
    """What `--interface` would remove (audit): crop boxes and masked marks, the images that lose most."""
    if not f:
        return
    n = len(f["images"])
    c.print(
        f"interface {f['option']} (what `medcad train --interface {f['option']}` removes): {f['n_cropped']} of {n} "
        f"images cropped (kept median {f['kept_median']:.0%}, least {f['kept_min']:.0%} of the frame); "
        f"{f['n_marked']} with marks masked (mean {f['masked_mean']:.2%}, most {f['masked_max']:.1%} of the crop)"
    )
    rows = sorted(f["images"], key=lambda r: (r["kept"], -r["masked"]))[:limit]
    rows += [r for r in sorted(f["images"], key=lambda r: -r["masked"])[:limit] if r not in rows]
    rows = [r for r in rows if r["kept"] < 0.99 or r["masked"] > 0]
    if rows:
        t = Table("image", "crop box x0, y0, x1, y1", "kept", "masked", title="Images that lose most")
        for r in rows:
            t.add_row(r["image"], ", ".join(map(str, r["box"])), f"{r['kept']:.0%}", f"{r['masked']:.2%}")
        c.print(t)
    c.print(f"before/after thumbnails (box green, marks red): {f['thumbnails']}")
