/* tests/data/pyjson/fuzz_driver.c: stdin -> pj_parse/pj_dump/pj_repr -> stdout,
 * for fuzz_diff.py (differential fuzzing against CPython's json). Each input
 * line is hex-encoded bytes; each output line is "E<TAB>hex(error message)" or
 * "O<TAB>hex(dumps)<TAB>hex(compact+sort_keys dumps)<TAB>hex(repr)". Not built
 * by meson: fuzz_diff.py compiles it with cc against common/. */
#include "common/pyjson.h"
#include "common/buf.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void hex(const char *s, size_t n){ for(size_t i=0;i<n;i++) printf("%02x",(unsigned char)s[i]); }
int main(void){
  char *line=NULL; size_t cap=0; ssize_t n;
  while((n=getline(&line,&cap,stdin))>0){
    if(line[n-1]=='\n') line[--n]=0;
    size_t len=n/2; char *in=malloc(len+1);
    for(size_t i=0;i<len;i++){ unsigned x; sscanf(line+2*i,"%2x",&x); in[i]=(char)x; }
    pj_error e; pj_value *v=pj_parse(in,len,&e);
    if(!v){ printf("E\t"); hex(e.msg,strlen(e.msg)); printf("\n"); }
    else { buf a=BUF_INIT,b=BUF_INIT,c=BUF_INIT; pj_dump(&a,v,0); pj_dump(&b,v,3); pj_repr(&c,v);
      printf("O\t"); hex(a.data,a.len); printf("\t"); hex(b.data,b.len); printf("\t"); hex(c.data,c.len); printf("\n");
      buf_free(&a); buf_free(&b); buf_free(&c); pj_free(v); }
    free(in);
  }
  free(line); return 0; }
