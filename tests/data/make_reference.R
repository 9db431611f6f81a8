## make_reference.R -- generate lme4 reference values for gdag's tests.
##
## Not run by CI. Regenerate with:
##     cd tests/data && Rscript make_reference.R
##
## Requires R packages lme4 (provides the data sets) and jsonlite.
## Numbers in the JSON files are written with the fewest significant digits
## (15-17) that round-trip the double exactly.
## Writes, in the current directory:
##   dyestuff.csv,    dyestuff_reference.json
##   sleepstudy.csv,  sleepstudy_reference.json
##   penicillin.csv,  penicillin_reference.json
##   insteval.csv.gz, insteval_reference.json
##
## Every grouping factor is written to the CSVs as a 0-based integer code,
## as.integer(f) - 1, i.e. in lme4's (R's) factor-level order; the same order
## is used for the conditional modes in the JSON files.
##
## JSON structure of every fit (identical keys for all fits):
##   formula, reml (bool), method ("REML"/"ML"), nobs,
##   loglik       logLik(fit) (REML log-likelihood for REML fits, ML otherwise)
##   df           number of parameters counted by logLik()
##   minus2loglik -2 * loglik (= REML criterion / ML deviance)
##   aic, bic     AIC(fit), BIC(fit) (based on the above logLik, as lme4 reports)
##   fixef        {term: estimate}
##   fixef_se     {term: sqrt(diag(vcov(fit)))}
##   sd           {group: {term: SD}, "residual": sigma}
##   cor          {group: {"termA,termB": correlation}}  ({} if none estimated)
##   theta        lme4's relative covariance factor parameters, getME(fit, "theta")
##   ranef        {group: {n_levels, levels (labels, first ones only if truncated),
##                 mode: {term: [...]}, sd: {term: [...]},
##                 cond_cov: {"termA,termB": [...]}}}
##                mode = conditional modes, ranef(fit, condVar = TRUE);
##                sd = sqrt of the diagonal of its postVar attribute;
##                cond_cov = off-diagonal of postVar (only for correlated terms).
##   optimizer, converged_messages
## Group names are the lme4 grouping-factor names in lower case
## (Batch -> batch, Subject -> subject; s, d, dept, plate, sample unchanged).

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

## ---------------------------------------------------------------------------
## helpers

grp_key <- function(g) tolower(sub("\\.[0-9]+$", "", g))  # "Subject.1" -> "subject"

sd_cor <- function(fit) {
  vc <- as.data.frame(VarCorr(fit))
  sds <- list(); cors <- list()
  for (i in seq_len(nrow(vc))) {
    r <- vc[i, ]
    if (r$grp == "Residual") next
    g <- grp_key(r$grp)
    if (is.na(r$var2)) {
      if (is.null(sds[[g]])) sds[[g]] <- list()
      sds[[g]][[r$var1]] <- r$sdcor
    } else {
      if (is.null(cors[[g]])) cors[[g]] <- list()
      cors[[g]][[paste(r$var1, r$var2, sep = ",")]] <- r$sdcor
    }
  }
  sds[["residual"]] <- sigma(fit)
  list(sd = sds, cor = if (length(cors)) cors else setNames(list(), character(0)))
}

## conditional modes and conditional SDs; keep only the first n_keep[[g]]
## levels of group g when given
ranef_info <- function(fit, n_keep = list()) {
  re <- ranef(fit, condVar = TRUE)
  fl <- getME(fit, "flist")
  out <- list()
  for (gname in names(re)) {
    g <- grp_key(gname)
    df <- re[[gname]]
    pv <- attr(df, "postVar")
    levs <- levels(fl[[gname]])
    stopifnot(identical(rownames(df), levs))
    n <- length(levs)
    keep <- seq_len(min(n, if (is.null(n_keep[[g]])) n else n_keep[[g]]))
    terms <- colnames(df)
    mode <- list(); csd <- list(); ccov <- list()
    if (is.list(pv)) {
      ## several terms for the same grouping factor in separate (uncorrelated)
      ## blocks: postVar is a list of arrays, one per block
      k <- 0
      for (blk in pv) {
        nt <- dim(blk)[1]
        for (j in seq_len(nt)) csd[[terms[k + j]]] <- I(sqrt(blk[j, j, keep]))
        if (nt > 1) for (a in 1:(nt - 1)) for (b in (a + 1):nt)
          ccov[[paste(terms[k + a], terms[k + b], sep = ",")]] <- I(blk[a, b, keep])
        k <- k + nt
      }
    } else {
      nt <- dim(pv)[1]
      for (j in seq_len(nt)) csd[[terms[j]]] <- I(sqrt(pv[j, j, keep]))
      if (nt > 1) for (a in 1:(nt - 1)) for (b in (a + 1):nt)
        ccov[[paste(terms[a], terms[b], sep = ",")]] <- I(pv[a, b, keep])
    }
    for (t in terms) mode[[t]] <- I(df[keep, t])
    csd <- csd[terms]
    out[[g]] <- list(
      n_levels = n,
      levels = I(levs[keep]),
      mode = mode,
      sd = csd,
      cond_cov = if (length(ccov)) ccov else setNames(list(), character(0))
    )
  }
  out
}

summarise_fit <- function(fit, n_keep = list()) {
  ll <- logLik(fit)
  fe <- fixef(fit)
  se <- sqrt(diag(as.matrix(vcov(fit))))
  names(se) <- names(fe)
  sc <- sd_cor(fit)
  th <- getME(fit, "theta")
  list(
    formula = paste(deparse(formula(fit)), collapse = " "),
    reml = isREML(fit),
    method = if (isREML(fit)) "REML" else "ML",
    nobs = nobs(fit),
    loglik = as.numeric(ll),
    df = attr(ll, "df"),
    minus2loglik = -2 * as.numeric(ll),
    aic = AIC(fit),
    bic = BIC(fit),
    fixef = as.list(fe),
    fixef_se = as.list(se),
    sd = sc$sd,
    cor = sc$cor,
    theta = as.list(th),
    ranef = ranef_info(fit, n_keep),
    optimizer = fit@optinfo$optimizer,
    converged_messages = I(as.character(unlist(fit@optinfo$conv$lme4$messages)))
  )
}

meta <- function() list(
  generated_by = "tests/data/make_reference.R",
  r_version = R.version.string,
  lme4_version = as.character(packageVersion("lme4")),
  matrix_version = as.character(packageVersion("Matrix")),
  blas = unname(extSoftVersion()["BLAS"]),
  date = format(Sys.Date())
)

## Minimal JSON writer. jsonlite's toJSON() prints at most 15 significant
## digits, which does not round-trip doubles, so numbers are written here with
## the fewest digits (15, 16 or 17) that reproduce the double exactly.
## Named lists -> objects, unnamed lists -> arrays, vectors wrapped in I() ->
## arrays (whatever their length), other length-1 atomics -> scalars.
num_str <- function(x) {
  if (is.na(x) || !is.finite(x)) return("null")
  for (d in 15:17) {
    s <- sprintf(paste0("%.", d, "g"), x)
    if (as.numeric(s) == x) break
  }
  s
}
scalar_str <- function(x) {
  if (is.logical(x)) return(if (is.na(x)) "null" else if (x) "true" else "false")
  if (is.numeric(x)) return(num_str(x))
  if (is.na(x)) return("null")
  toJSON(unbox(as.character(x)))  # string escaping
}
to_json <- function(x, indent = 0) {
  pad <- strrep("  ", indent + 1); pad0 <- strrep("  ", indent)
  if (is.list(x)) {
    if (length(x) == 0) return(if (is.null(names(x))) "[]" else "{}")
    if (!is.null(names(x))) {
      items <- vapply(names(x), function(n)
        paste0(pad, scalar_str(n), ": ", to_json(x[[n]], indent + 1)), "")
    } else {
      items <- vapply(x, function(v) paste0(pad, to_json(v, indent + 1)), "")
    }
    open <- if (is.null(names(x))) "[" else "{"
    close <- if (is.null(names(x))) "]" else "}"
    return(paste0(open, "\n", paste(items, collapse = ",\n"), "\n", pad0, close))
  }
  if (inherits(x, "AsIs") || length(x) != 1) {
    x <- unclass(x)
    return(paste0("[", paste(vapply(x, scalar_str, ""), collapse = ", "), "]"))
  }
  scalar_str(x)
}

write_json_file <- function(x, path) {
  writeLines(to_json(x), path)
  cat("wrote", path, "\n")
}

write_csv <- function(df, path) {
  con <- if (grepl("\\.gz$", path)) gzfile(path, "w") else file(path, "w")
  write.csv(df, con, row.names = FALSE, quote = FALSE)
  close(con)
  cat("wrote", path, "(", nrow(df), "rows )\n")
}

code0 <- function(f) as.integer(f) - 1L

## refit a model from the CSV just written (grouping columns as factors of the
## 0-based codes) and check it reproduces the reference log-likelihood, i.e.
## that the CSV carries exactly the data that was fitted
check_csv <- function(path, formula, groups, fit) {
  d <- read.csv(if (grepl("\\.gz$", path)) gzfile(path) else path)
  for (g in groups) d[[g]] <- factor(d[[g]])
  refit <- lmer(formula, d, REML = isREML(fit))
  stopifnot(abs(as.numeric(logLik(refit)) - as.numeric(logLik(fit))) < 1e-6)
  cat("checked", path, "reproduces", if (isREML(fit)) "REML" else "ML", "fit\n")
}

## ---------------------------------------------------------------------------
## 1. Dyestuff: Yield ~ 1 + (1|Batch)

write_csv(data.frame(batch = code0(Dyestuff$Batch), yield = Dyestuff$Yield),
          "dyestuff.csv")
f_reml <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = TRUE)
f_ml   <- lmer(Yield ~ 1 + (1 | Batch), Dyestuff, REML = FALSE)
check_csv("dyestuff.csv", yield ~ 1 + (1 | batch), "batch", f_reml)
write_json_file(list(meta = meta(), data = "lme4::Dyestuff",
                     reml = summarise_fit(f_reml), ml = summarise_fit(f_ml)),
                "dyestuff_reference.json")

## ---------------------------------------------------------------------------
## 2. sleepstudy: Reaction ~ 1 + Days + (1 + Days | Subject), REML and ML;
##    uncorrelated variant (1|Subject) + (0 + Days|Subject), ML

write_csv(data.frame(subject = code0(sleepstudy$Subject),
                     days = sleepstudy$Days,
                     reaction = sleepstudy$Reaction),
          "sleepstudy.csv")
s_reml <- lmer(Reaction ~ 1 + Days + (1 + Days | Subject), sleepstudy, REML = TRUE)
s_ml   <- lmer(Reaction ~ 1 + Days + (1 + Days | Subject), sleepstudy, REML = FALSE)
s_unc  <- lmer(Reaction ~ 1 + Days + (1 | Subject) + (0 + Days | Subject),
               sleepstudy, REML = FALSE)
check_csv("sleepstudy.csv", reaction ~ 1 + days + (1 + days | subject),
          "subject", s_ml)
write_json_file(list(meta = meta(), data = "lme4::sleepstudy",
                     reml = summarise_fit(s_reml), ml = summarise_fit(s_ml),
                     ml_uncorrelated = summarise_fit(s_unc)),
                "sleepstudy_reference.json")

## ---------------------------------------------------------------------------
## 3. Penicillin (crossed): diameter ~ 1 + (1|plate) + (1|sample)

write_csv(data.frame(plate = code0(Penicillin$plate),
                     sample = code0(Penicillin$sample),
                     diameter = Penicillin$diameter),
          "penicillin.csv")
p_reml <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin, REML = TRUE)
p_ml   <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin, REML = FALSE)
check_csv("penicillin.csv", diameter ~ 1 + (1 | plate) + (1 | sample),
          c("plate", "sample"), p_reml)
write_json_file(list(meta = meta(), data = "lme4::Penicillin",
                     reml = summarise_fit(p_reml), ml = summarise_fit(p_ml)),
                "penicillin_reference.json")

## ---------------------------------------------------------------------------
## 4. InstEval: y ~ 1 + (1|s) + (1|d) + (1|dept), ML
##    Conditional modes only for all 14 dept levels and the first 20 levels
##    of d and s (keeps the file small).

write_csv(data.frame(s = code0(InstEval$s), d = code0(InstEval$d),
                     dept = code0(InstEval$dept), y = InstEval$y),
          "insteval.csv.gz")
tm <- system.time(
  i_ml <- lmer(y ~ 1 + (1 | s) + (1 | d) + (1 | dept), InstEval, REML = FALSE)
)
i_sum <- summarise_fit(i_ml, n_keep = list(s = 20, d = 20))
i_sum$fit_time_elapsed_s <- unname(tm["elapsed"])
i_sum$fit_time_note <- paste0(
  "system.time(lmer(...))['elapsed'], default lmerControl(), BLAS: ",
  unname(extSoftVersion()["BLAS"]), ", machine: ", Sys.info()[["machine"]])
check_csv("insteval.csv.gz", y ~ 1 + (1 | s) + (1 | d) + (1 | dept),
          c("s", "d", "dept"), i_ml)
write_json_file(list(meta = meta(), data = "lme4::InstEval",
                     ml = i_sum),
                "insteval_reference.json")

## ---------------------------------------------------------------------------
## 5. Formula front end (gdag.from_formula / gdag.lmer). These CSVs keep the
##    labels of the grouping factors (not codes), as a user's data frame does.
##
##    Pastes, nested: strength ~ 1 + (1 | batch/cask), REML and ML
##    (lme4 names the inner group "cask:batch", levels "a:A", ...).
##    cake, a categorical fixed effect with an interaction and an a:b group:
##    angle ~ recipe * temp + (1 | recipe:replicate), REML; and
##    angle ~ recipe + temp + I(temp^2) + (1 | replicate), ML.
##    sleepstudy predictions: predict(fit, newdata, allow.new.levels = TRUE)
##    and re.form = NA (population) for seen and unseen subjects.

write_csv(data.frame(batch = Pastes$batch, cask = Pastes$cask,
                     strength = Pastes$strength), "pastes.csv")
pa_reml <- lmer(strength ~ 1 + (1 | batch/cask), Pastes, REML = TRUE)
pa_ml   <- lmer(strength ~ 1 + (1 | batch/cask), Pastes, REML = FALSE)
write_json_file(list(meta = meta(), data = "lme4::Pastes",
                     reml = summarise_fit(pa_reml), ml = summarise_fit(pa_ml)),
                "pastes_reference.json")

write_csv(data.frame(replicate = cake$replicate, recipe = cake$recipe,
                     temp = cake$temp, angle = cake$angle), "cake.csv")
ck_int  <- lmer(angle ~ recipe * temp + (1 | recipe:replicate), cake, REML = TRUE)
ck_poly <- lmer(angle ~ recipe + temp + I(temp^2) + (1 | replicate), cake, REML = FALSE)
write_json_file(list(meta = meta(), data = "lme4::cake",
                     interaction_reml = summarise_fit(ck_int),
                     quadratic_ml = summarise_fit(ck_poly)),
                "cake_reference.json")

ss <- sleepstudy
s_fit <- lmer(Reaction ~ 1 + Days + (1 + Days | Subject), ss, REML = TRUE)
newdata <- data.frame(Subject = c("308", "308", "372", "999", "999"),
                      Days = c(0, 5.5, 9, 0, 4))
write_json_file(list(
  meta = meta(),
  formula = "Reaction ~ 1 + Days + (1 + Days | Subject)", reml = TRUE,
  newdata = list(Subject = I(newdata$Subject), Days = I(newdata$Days)),
  predict = I(unname(predict(s_fit, newdata, allow.new.levels = TRUE))),
  predict_population = I(unname(predict(s_fit, newdata, re.form = NA)))),
  "sleepstudy_predict_reference.json")

## profile intervals: confint(fit, method = "profile", oldNames = FALSE)
## (lme4 profiles the ML deviance, refitting a REML fit by ML first)
set.seed(1)
small_group <- data.frame(g = factor(rep(letters[1:6], each = 4)))
small_group$y <- 0.3 * rnorm(6)[small_group$g] + rnorm(24)
write_csv(small_group, "small_group.csv")
prof_ci <- function(fit) {
  ci <- confint(fit, method = "profile", oldNames = FALSE)
  setNames(lapply(rownames(ci), function(r) I(unname(ci[r, ]))), rownames(ci))
}
write_json_file(list(
  meta = meta(),
  dyestuff = list(formula = "Yield ~ 1 + (1 | Batch)",
                  confint = prof_ci(lmer(Yield ~ 1 + (1 | Batch), Dyestuff))),
  sleepstudy = list(formula = "Reaction ~ 1 + Days + (1 + Days | Subject)",
                    confint = prof_ci(s_fit)),
  sleepstudy_uncorrelated = list(
    formula = "Reaction ~ 1 + Days + (1 + Days || Subject)",
    confint = prof_ci(lmer(Reaction ~ 1 + Days + (1 + Days || Subject), ss))),
  penicillin = list(formula = "diameter ~ 1 + (1 | plate) + (1 | sample)",
                    confint = prof_ci(lmer(diameter ~ 1 + (1 | plate) + (1 | sample), Penicillin))),
  small_group = list(formula = "y ~ 1 + (1 | g)", reml = FALSE,  # a group SD whose interval reaches 0
                     confint = prof_ci(lmer(y ~ 1 + (1 | g), small_group, REML = FALSE)))),
  "profile_reference.json")

## likelihood-ratio table: anova() of three sleepstudy REML fits (lme4 refits them by ML)
an <- as.data.frame(anova(
  lmer(Reaction ~ 1 + Days + (1 + Days | Subject), sleepstudy),
  lmer(Reaction ~ 1 + Days + (1 + Days || Subject), sleepstudy),
  lmer(Reaction ~ 1 + Days + (1 | Subject), sleepstudy)))
write_json_file(list(
  meta = meta(),
  formulas = I(c("Reaction ~ 1 + Days + (1 | Subject)",
                 "Reaction ~ 1 + Days + (1 + Days || Subject)",
                 "Reaction ~ 1 + Days + (1 + Days | Subject)")),  # the table's row order (by npar)
  table = lapply(as.list(an), function(col) I(unname(col)))),
  "anova_reference.json")
